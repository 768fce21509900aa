"""#21 Shampoo (Meta's DistributedShampoo, vendored in the result folder), the folder's train_gpt_shampoo.py.

The script imports distributed_shampoo from its folder, so the folder is exported from the checkout and put on
sys.path. precondition_frequency is 5 in the run, and start_preconditioning_step=-1 means "= precondition
frequency": the first 4 steps use the Adam grafting direction alone. Here the frequency is 2, so over 5 steps the
run crosses the switch: step 1 grafting only, step 2 the first root-inverse computation and Shampoo direction
(grafted to the Adam norm), step 3 with the step-2 inverse roots, step 4 a recomputation, step 5 with it (steps
counted from 1 as the library does). Stable then linear decay with cooldown_frac 0.7."""

RESULT = 21
STEPS = 5
KWARGS = {"DistributedShampoo": {"precondition_frequency": 2}}
LIBRARY = True
NOTES = __doc__
