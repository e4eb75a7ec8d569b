"""What the stages share: data sources, file formats, imaging, the text encoder, the model,
scoring, metrics, figures, training, parameters. `stages/` holds the programs dvc.yaml runs."""
