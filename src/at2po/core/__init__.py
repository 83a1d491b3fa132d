"""Pure math on tensors and turn trees: no I/O, no global state, imports only torch."""
