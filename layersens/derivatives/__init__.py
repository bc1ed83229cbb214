"""Beyond the dense Jacobian: the Jacobian as a linear operator, and derivatives of scalar readouts of a layer."""

from ._operator import LinearizedLayer, linearize
from ._products import PRODUCTS_FORMAT, JacobianProducts, products
from ._second_order import MAX_HESSIAN_PARAMS, ReadoutDerivative, hessian, hvp, readout_gradient, readout_function
from ._verify import Verification, verify
