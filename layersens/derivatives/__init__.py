"""Beyond the dense Jacobian: the Jacobian as a linear operator, and derivatives of scalar readouts of a layer."""

from ._estimate import estimate_frobenius, estimate_parameter_diagonal, estimate_unit_diagonal
from ._ntk import layer_ntk
from ._operator import LinearizedLayer, linearize
from ._products import PRODUCTS_FORMAT, JacobianProducts, products
from ._second_order import MAX_HESSIAN_PARAMS, ReadoutDerivative, hessian, hvp, readout_function, readout_gradient
from ._spectrum import spectrum
from ._verify import Verification, verify
