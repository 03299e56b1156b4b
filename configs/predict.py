"""mode=predict: a trained run's predictions for a folder or CSV of patches.

The mode is implemented in cellvit_jax/modes/predict.py.

  python -m cellvit_jax.main --config=configs/predict.py \
      --config.predict.run=runs/customvit --config.predict.input=my_patches/ --workdir=preds

Writes <workdir>/predictions.csv (default <run>/predict/): the input's columns, then
predicted_class, predicted_index and prob_<class> per class.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.mode = "predict"
  config.predict = ml_collections.ConfigDict(dict(
      run="",             # workdir of a finished run: small model, FM probe or fine-tune (required)
      input="",           # a folder of patch images (searched recursively) or a CSV (required)
      batch_size=0,       # global batch over all devices; 0 -> the run's eval_batch_size
      resize=False,       # resize patches of another size to the run's patch size (else refused)
      skip_bad=False,     # skip unreadable files / bad rows (counted) instead of failing
      path_column="path", x_column="x", y_column="y",   # CSV columns; x, y optional crop centres
      data_dir="",        # "" -> the run's config.dataset.data_dir (for its class names)
  ))
  return config
