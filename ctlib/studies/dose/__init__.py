"""Radiotherapy dose prediction on OpenKBP: the glue between ``ctlib.io``, the models and the notebooks.

Preprocessing:
- ``patient_file``: the one-file-per-patient format (``DosePatient``) every dose notebook reads.
- ``structure_names``: canonical OpenKBP ROI names and the clinical RTSTRUCT naming variants.
- ``features``: signed distance fields, the constraint vector, ``OpenKBPPatient`` -> ``DosePatient``.
- ``preprocess``: many patients -> ``<run_dir>/patients/<split>/<id>.npz`` and ``manifest.csv``;
  synthetic phantom patients (``phantom``) for runs on embedded data.
- ``dicom_rt_import``: CT + RTSTRUCT + RTDOSE -> ``OpenKBPPatient`` (readers in ``ctlib.io.dicom_rt``).

Training and inference: ``datasets`` (network inputs, patches), ``losses``, ``diffusion`` (the
conditional diffusion ablation), ``inference`` (sliding windows), ``model_io`` (models from their config).
Evaluation and figures: ``evaluation`` (OpenKBP scores, DVH, gamma per patient), ``figures``.
"""
