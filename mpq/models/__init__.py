"""Model zoo: `create(name, num_classes, **kwargs)` is the only way in."""
from mpq.models.registry import create, list_models, register

# Imported for their side effect: each module registers its architectures.
from mpq.models import cifar_resnet as _cifar_resnet  # noqa: F401,E402
from mpq.models import imagenet as _imagenet  # noqa: F401,E402

__all__ = ["create", "list_models", "register"]
