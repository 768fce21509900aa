"""Device code only: the @triton.jit kernels of each op (kernels/jit/<op>.py) and the building blocks they share
(matmul.py). Their launchers, checks, custom ops and registration live in kernels/<op>.py."""
