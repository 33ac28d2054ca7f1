"""Built-in coupling rules, one module per op family; importing this package registers them."""
from amgp_fx.groups.rules import (  # noqa: F401
    attention,
    embedding,
    interaction,
    linear,
    norm,
    pointwise,
    recurrent,
    reduction,
    shape,
)
