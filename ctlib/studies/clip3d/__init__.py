"""3D CT-report CLIP: zero-shot detection of the 18 CT-RATE findings (Hamamci et al. 2024, CT-CLIP).

Modules: ``findings`` (the 18 names and label columns mapped by name), ``ctrate`` (the CT-RATE folder
layout), ``preprocess`` (RAS, HU clip, aspect-preserving fit, uint8, the double-rescale check),
``h5store`` (one HDF5 file per split). Evaluation metrics live in ``ctlib.metrics.classification``.
"""
