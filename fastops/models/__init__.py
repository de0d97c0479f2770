"""Whole networks of the efficient-CNN family on fastops' fused blocks.

    model = fastops.models.mobilenet_v2(num_classes=1000)
    model.load_state_dict(torchvision.models.mobilenet_v2(weights=...).state_dict())  # same keys
    fastops.models.list_models()                # every builder's name
    fastops.models.create_model("shufflenet_v1", groups=3)

Where torchvision (timm, for Xception) has the network, the state_dict keys and shapes are
identical to it, so its weights load and eval outputs agree. MobileNet V1 and ShuffleNet V1,
which torchvision lacks, follow their papers.
"""

from ._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

# importing each builder's module registers it
from .mobilenet_v1 import mobilenet_v1  # noqa: E402
from .mobilenet_v2 import mobilenet_v2  # noqa: E402
from .mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small  # noqa: E402
from .resnext import resnet18, resnet50, resnext50_32x4d  # noqa: E402
from .shufflenet_v1 import shufflenet_v1  # noqa: E402
from .shufflenet_v2 import shufflenet_v2_x0_5, shufflenet_v2_x1_0, shufflenet_v2_x1_5, shufflenet_v2_x2_0  # noqa: E402
from .squeezenet import squeezenet1_0, squeezenet1_1  # noqa: E402
from .xception import xception  # noqa: E402

__all__ += list_models()
