"""Analysis command-line tools over finished runs and studies: result tables, study reports
and plots, cost (parameters, GFLOPs, throughput), rows exported to docs/results/, and the pixel
logistic baseline."""
