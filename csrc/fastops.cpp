// Every fastops operator schema, declared once.
//
// Kernels are added per dispatch key next to their code (csrc/cpu/<family>.cpp registers CPU,
// csrc/cuda/<family>.cu registers CUDA). Fake (meta) impls and autograd are registered in Python
// (fastops/ops.py), except the autograd of every op but the blocks (inverted_residual,
// shuffle_v2_block, stem_conv_bn_act): csrc/autograd.cpp, as their per-call cost shows in
// training steps. Backward passes are operators of their own so that they too can be checked,
// compiled and exported.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fastops, m) {
  // --- activations (csrc/cpu/activation.cpp, csrc/cuda/activation.cu) ---
  m.def("hardswish(Tensor x) -> Tensor");
  m.def("hardswish_backward(Tensor grad_out, Tensor x) -> Tensor");
  m.def("hardswish_(Tensor(a!) x) -> ()");
  m.def("hardsigmoid(Tensor x) -> Tensor");
  m.def("hardsigmoid_backward(Tensor grad_out, Tensor x) -> Tensor");
  m.def("hardsigmoid_(Tensor(a!) x) -> ()");

  // --- depthwise conv + affine + activation (csrc/dwconv.h, cpu/dwconv.cpp, cuda/dwconv.cu) ---
  m.def(
      "dwconv_bn_act(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, int[2] stride, "
      "int[2] padding, int[2] dilation, str act) -> Tensor");
  // -> (grad_x, grad_weight, grad_scale, grad_shift); grad_scale / grad_shift are computed as if
  // scale = 1 / shift = 0 where those are None (autograd drops them then).
  m.def(
      "dwconv_bn_act_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? scale, "
      "Tensor? shift, int[2] stride, int[2] padding, int[2] dilation, str act) "
      "-> (Tensor, Tensor, Tensor, Tensor)");

  // --- training-mode BatchNorm + activation (csrc/bn_act.h, cpu/bn_act.cpp, cuda/bn_act.cu) ---
  // -> (y, mean, var): the batch statistics per channel (var biased) and
  // y = act((x - mean) / sqrt(var + eps) * weight + bias).
  m.def("bn_act_train(Tensor x, Tensor? weight, Tensor? bias, float eps, str act) -> (Tensor, Tensor, Tensor)");
  // -> (grad_x, grad_weight, grad_bias), through the batch statistics; mean / var are the
  // forward's. grad_weight / grad_bias are computed as if weight = 1 / bias = 0 where None.
  m.def(
      "bn_act_train_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor var, Tensor? weight, "
      "Tensor? bias, float eps, str act) -> (Tensor, Tensor, Tensor)");

  // --- channel shuffle (csrc/shuffle.h, cpu/shuffle.cpp, cuda/shuffle.cu) ---
  // The gradient of channel_shuffle(x, G) is channel_shuffle(grad, C / G).
  m.def("channel_shuffle(Tensor x, int groups) -> Tensor");
  // channel_shuffle(cat([a, b], 1), 2) in one pass; backward -> (grad_a, grad_b), split = a's channels.
  m.def("concat_shuffle(Tensor a, Tensor b) -> Tensor");
  m.def("concat_shuffle_backward(Tensor grad_out, int split) -> (Tensor, Tensor)");

  // --- squeeze-excite (csrc/squeeze_excite.h, cpu/squeeze_excite.cpp, cuda/squeeze_excite.cu) ---
  m.def("squeeze_excite(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, str act, str gate) -> Tensor");
  // -> (grad_x, grad_w1, grad_b1, grad_w2, grad_b2); grad_b1 / grad_b2 as if the biases were 0
  // where None.
  m.def(
      "squeeze_excite_backward(Tensor grad_out, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str act, str gate) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // --- 1x1 conv + affine (+ residual) + activation (+ shuffle) (csrc/pwconv.h, cpu/pwconv.cpp,
  // cuda/pwconv.cu) ---
  m.def(
      "pwconv_bn_act(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, int groups, str act, "
      "Tensor? residual, int shuffle_groups) -> Tensor");
  // -> (grad_x, grad_weight, grad_scale, grad_shift, grad_residual); grad_scale / grad_shift as if
  // scale = 1 / shift = 0 where None; grad_residual empty (0 elements, nothing computed for it)
  // where residual is None.
  m.def(
      "pwconv_bn_act_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? scale, Tensor? shift, "
      "int groups, str act, Tensor? residual, int shuffle_groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // -> (grad_x, grad_weight) of the plain 1x1 conv pwconv_bn_act(x, weight, groups=groups): the
  // backward autograd takes when there is no scale, shift, residual, activation or shuffle, whose
  // gradients pwconv_bn_act_backward would also compute
  m.def("pwconv_backward(Tensor grad_out, Tensor x, Tensor weight, int groups) -> (Tensor, Tensor)");

  // --- depthwise conv then 1x1 conv + affine + activation (csrc/separable.h, cpu/separable.cpp,
  // cuda/separable.cu) ---
  m.def(
      "separable_conv_bn_act(Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor? scale, Tensor? shift, "
      "int[2] stride, int[2] padding, int[2] dilation, str act) -> Tensor");
  // -> (grad_x, grad_dw_weight, grad_pw_weight, grad_scale, grad_shift)
  m.def(
      "separable_conv_bn_act_backward(Tensor grad_out, Tensor x, Tensor dw_weight, Tensor pw_weight, "
      "Tensor? scale, Tensor? shift, int[2] stride, int[2] padding, int[2] dilation, str act) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // --- MobileNet V2 / V3 inverted residual block, inference: [expand 1x1 + affine + act: w1, s1,
  // b1, all three or none (a block without expansion, E = C)], depthwise k x k (padding k // 2) +
  // affine + act, [squeeze-excite: relu, hardsigmoid gate, se_w1 [S, E(, 1, 1)], se_w2
  // [E, S(, 1, 1)]], project 1x1 + affine [+ x]
  // (cpu/inverted_residual.cpp; other devices run the composition of the ops above) ---
  m.def(
      "inverted_residual(Tensor x, Tensor? w1, Tensor? s1, Tensor? b1, Tensor w2, Tensor s2, Tensor b2, "
      "Tensor w3, Tensor s3, Tensor b3, int stride, str act, bool residual, Tensor? se_w1=None, "
      "Tensor? se_b1=None, Tensor? se_w2=None, Tensor? se_b2=None) -> Tensor");

  // --- a network's first layer, inference: dense conv (few input channels: RGB) + affine + act,
  // then max pool unless pool_kernel is [1, 1] and pool_stride [1, 1] (ShuffleNet / ResNet's stem)
  // (cpu/stem_conv.cpp; backward and other devices: the composition in fastops/ops.py) ---
  m.def(
      "stem_conv_bn_act(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, int[2] stride, int[2] padding, "
      "str act, int[2] pool_kernel=[1, 1], int[2] pool_stride=[1, 1], int[2] pool_padding=[0, 0]) -> Tensor");
  // -> (grad_x, grad_weight, grad_scale, grad_shift), as dwconv_bn_act_backward's
  m.def(
      "stem_conv_bn_act_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? scale, Tensor? shift, "
      "int[2] stride, int[2] padding, str act, int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding) "
      "-> (Tensor, Tensor, Tensor, Tensor)");

  // --- ShuffleNet V2's unit, inference. Stride 1: x split into halves x1, x2; x2 through 1x1 +
  // affine + act (w1 [E, C/2]), depthwise k x k (padding k // 2) + affine, 1x1 + affine + act
  // (w3 [C/2, E]); concat_shuffle(x1, that). Stride > 1: no split, branch2 as above on x
  // (w1 [E, C], the depthwise with the stride), x1 = branch1(x): depthwise (w4 [C, 1, k, k],
  // stride) + affine, 1x1 + affine + act (w5 [B, C], B = w3's rows); given exactly then
  // (cpu/shuffle_v2_block.cpp; other devices run the composition of the ops above) ---
  m.def(
      "shuffle_v2_block(Tensor x, Tensor w1, Tensor s1, Tensor b1, Tensor w2, Tensor s2, Tensor b2, "
      "Tensor w3, Tensor s3, Tensor b3, str act=\"relu\", int stride=1, Tensor? w4=None, Tensor? s4=None, "
      "Tensor? b4=None, Tensor? w5=None, Tensor? s5=None, Tensor? b5=None) -> Tensor");
}

// `import fastops._C` loads this library, which runs the registrations above. The module itself
// carries no functions: everything is reached through torch.ops.fastops.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fastops compiled kernels (see torch.ops.fastops)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
