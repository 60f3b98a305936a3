"""Bad-input corpus (issue 11): a generated set of malformed and unusual inputs for DICOM, NIfTI, OpenKBP,
checkpoints, CLI arguments and run parameters, each with its expected outcome, run one subprocess per case.

``make_corpus.generate(root)`` writes the inputs; ``runner`` runs and judges them;
``tests/test_bad_input_corpus.py`` runs the whole corpus under pytest.
"""
