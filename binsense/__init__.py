"""binsense: binary neural networks that survive real hardware.

The package is organised by concept (see ``docs/architecture.md``):

- :mod:`binsense.quant`    sign / straight-through estimators and fixed-point quantizers
- :mod:`binsense.layers`   binary convolution / linear layers and friends
- :mod:`binsense.data`     data-set registry and the device-resident batch loader
- :mod:`binsense.models`   architectures selectable by name
- :mod:`binsense.train`    training loop, checkpoints and resume
- :mod:`binsense.study`    study files, runner, results store and reports
"""

__version__ = "0.1.0"
