"""Tables and figures of the report. `FIGURE_NAMES`: the files `python -m repgeom.plots figures` writes per model
(`{name}.png`, and `{name}.pdf` with --pdf), importable without matplotlib for the workflow's output lists."""

FIGURE_NAMES = (
    "id_gride",
    "n_clusters",
    "ari",
    "label_overlap",
    "data_overlap",
    "probe",
    "local_id_steps",
    "accuracy_table",
)
