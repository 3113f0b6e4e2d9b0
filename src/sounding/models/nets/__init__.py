"""Plain ``nn.Module`` networks. Each classifier is a ``backbone`` (features) followed by a linear ``head``,
so that transfer learning can swap or freeze either part.
"""

from sounding.models.nets import gan  # noqa: F401  (generator and discriminator)
from sounding.models.nets.cnn import CNN
from sounding.models.nets.fcn import FCN
from sounding.models.nets.linear import Linear
from sounding.models.nets.mlp import MLP
from sounding.models.nets.rnn import RNN

__all__ = ["CNN", "FCN", "MLP", "RNN", "Linear"]
