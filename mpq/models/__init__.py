"""Model zoo: `create(name, num_classes, **kwargs)` is the only way in."""
from mpq.models.registry import create, list_models, register

# Imported for their side effect: each module registers its architectures.
from mpq.models import cifar_resnet as _cifar_resnet  # noqa: F401,E402

# torchvision's ImageNet models (mpq/models/imagenet.py), registered by name only: importing
# torchvision takes seconds, so a job loads it when it builds one of them.
IMAGENET_ARCHS = ("resnet18", "resnet50", "mobilenet_v2")


def _imagenet_builder(name: str):
    def build(num_classes: int, **kwargs):
        from mpq.models import imagenet

        return getattr(imagenet, name)(num_classes, **kwargs)

    build.__doc__ = f"torchvision {name} (mpq.models.imagenet.{name})"
    return build


for _name in IMAGENET_ARCHS:
    register(_name)(_imagenet_builder(_name))

__all__ = ["create", "list_models", "register"]
