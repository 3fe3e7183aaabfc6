"""``make bench``: cycles of the HSM, speed of the simulators and of the verifier, beside a TPM.

Not part of the ``mchsm`` package and not a test suite: it measures and reports, and never
fails because a target is missed (the table says by how much).  Run it from the repository
root as ``.venv/bin/python -m bench.run``; ``bench/run.py`` says what each section does.
"""
