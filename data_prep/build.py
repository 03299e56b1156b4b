"""Builds a cell-patch dataset from a folder, a CSV, PanNuke, Lizard or the IHC demo image.

    python -m data_prep.build --source=folder --input=/data/my_cells --name=my_cells
    python -m data_prep.build --source=ihc_demo --name=ihc_demo          # no --input needed
    python -m data_prep.build --source=pannuke --input=/data/PanNuke --name=pannuke \\
        --split_fractions=train=0.8,test=0.2 --split_seed=1 --data_dir=/data/tfds

Steps: read the source (`data_prep.sources`, one reader per --source) into patch_size crops
-> deal whole specimens to the splits (`data_prep.splits`, by --split_fractions and
--split_seed) -> write a TFDS ArrayRecord dataset plus cellvit_meta.json
(`cellvit_jax.data.tfds_writer`, atomically: a temporary folder renamed into place only when
complete) -> print the per-split, per-class counts and where the dataset is.

The split recipe (fractions, seed, the specimen -> split map), the reader's info, the
options and the skipped inputs are stored in the dataset's metadata (`info` in
cellvit_meta.json).  Train on the result with

    python -m cellvit_jax.main --config=configs/customvit.py \\
        --config.dataset.name=NAME --config.dataset.data_dir=DIR

Reader options are flags of the same name as the `data_prep.sources.Options` fields
(--skip_bad, --resize, --specimen_pattern, ...), so the hints in reader errors ("pass
resize=True (--resize)") are the flags to use.  Every bad input ends the run with one line
`error: ...` on stderr naming the input and the fix, and exit status 2; an existing dataset is
never touched unless --overwrite is given, and even then only replaced once the new one is
complete.  `build(argv)` runs the same thing in-process (tests, notebooks).
"""
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence

from absl import flags

from cellvit_jax.data import datasets, tfds_writer
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep import sources, splits

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
RESERVED_PREFIX = "synthetic_cells"   # names cellvit_jax builds on first use (datasets.py)
MAX_SKIPPED_LISTED = 1000             # skipped inputs kept in the metadata (all are counted)

# Where each source takes its specimen id from: the flags that change it.
SPECIMEN_FLAGS = {
    "folder": "--specimen_pattern or --specimen_csv",
    "csv": "--specimen_column",
    "pannuke": "--pannuke_specimen=image",
    "lizard": "--lizard_specimen=image",
    "ihc_demo": "a larger --ihc_grid",
}

# How to get patches of two or more classes from each source.
CLASSES_HELP = {
    "folder": "put each class's patches in its own subfolder, ROOT/<class>/*.png",
    "csv": "the label column must name two or more classes",
    "pannuke": "keep two or more classes with --class_names, or leave it out",
    "lizard": "keep two or more classes with --class_names, or leave it out",
    "ihc_demo": "keep both classes (leave --class_names out)",
}

INPUT_HELP = {
    "folder": "the folder ROOT that holds ROOT/<class>/<patch files>",
    "csv": "the CSV manifest (columns path,label,specimen[,x,y])",
    "pannuke": "the folder holding the unzipped PanNuke folds (fold_1 ... fold_3)",
    "lizard": "the folder holding the unzipped Lizard images and lizard_labels",
}

# Reader options exposed as flags: (Options field, help).  Defaults come from Options().
OPTION_FLAGS = [
    ("patch_size", "Side of the square crops in pixels."),
    ("pad_mode", "numpy.pad mode for crops that leave the source image (reflect, symmetric, "
                 "edge, constant, wrap, ...)."),
    ("pad_value", "Fill value 0..255 for --pad_mode=constant."),
    ("resize", "folder/csv: resize patch files of another size bilinearly instead of refusing."),
    ("skip_bad", "Skip and count bad inputs (corrupt files, unknown labels, ...) instead of "
                 "stopping at the first."),
    ("scale_16bit", "Scale 16-bit single-channel images to 8 bits (value / 257)."),
    ("class_names", "Comma-separated class list: folder/csv: the allowed labels in index "
                    "order; pannuke/lizard/ihc_demo: the subset of classes to keep."),
    ("specimen_pattern", "folder: regex with a named group 'specimen' searched in each file "
                         "name; default: the file stem before the first '_'."),
    ("specimen_csv", "folder: CSV with columns file,specimen naming each patch's specimen."),
    ("path_column", "csv: column with the image path (relative to the CSV's folder)."),
    ("label_column", "csv: column with the class label."),
    ("specimen_column", "csv: column with the specimen (patient/slide) id."),
    ("x_column", "csv: column with the crop centre's x (column), optional."),
    ("y_column", "csv: column with the crop centre's y (row), optional."),
    ("pannuke_specimen", "pannuke: 'image' (each image its own specimen) or 'fold'."),
    ("lizard_specimen", "lizard: 'image', 'slide' (DigestPath images of one slide together) "
                        "or 'fold'."),
    ("ihc_threshold", "ihc_demo: DAB optical-density threshold; default: Otsu's threshold."),
    ("ihc_disc_radius", "ihc_demo: radius (px) of the disc whose mean DAB decides the class."),
    ("ihc_min_area", "ihc_demo: smallest nucleus kept, in pixels."),
    ("ihc_grid", "ihc_demo: the image is cut into ihc_grid x ihc_grid tiles = specimens."),
]


class BuildError(ValueError):
  """Bad input to the build; the message names the input and the fix."""


def define_flags(fv: flags.FlagValues) -> None:
  """Defines the CLI's flags on `fv` (the global FLAGS under __main__, a fresh one in build)."""
  flags.DEFINE_enum("source", None, sorted(sources.KINDS), "Kind of input.", flag_values=fv)
  flags.DEFINE_string("input", "", "Input path (folder, CSV, dataset root); not needed for "
                      "--source=ihc_demo.", flag_values=fv)
  flags.DEFINE_string("name", None, "Name of the dataset to write (a plain folder name).",
                      flag_values=fv)
  flags.DEFINE_string("data_dir", "", "Where datasets live; default $CELLVIT_DATA, else "
                      "~/tensorflow_datasets (the same rule training uses).", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace an existing dataset of this name (only once "
                    "the new one is complete).", flag_values=fv)
  flags.DEFINE_string("split_fractions", "train=0.7,val=0.15,test=0.15",
                      "Comma-separated split=fraction pairs summing to 1; fractions count "
                      "specimens, not patches.", flag_values=fv)
  flags.DEFINE_integer("split_seed", 0, "Seed of the specimen shuffle that deals specimens "
                       "to splits.", flag_values=fv)
  flags.DEFINE_string("description", "", "Free text stored with the dataset.", flag_values=fv)
  defaults = Options()
  for field, help_text in OPTION_FLAGS:
    default = getattr(defaults, field)
    kind = {f.name: f.type for f in dataclasses.fields(Options)}[field]
    if kind is bool:
      flags.DEFINE_bool(field, default, help_text, flag_values=fv)
    elif kind is int:
      flags.DEFINE_integer(field, default, help_text, flag_values=fv)
    elif kind is str or kind == Optional[str]:
      flags.DEFINE_string(field, default, help_text, flag_values=fv)
    elif kind == Optional[float]:
      flags.DEFINE_float(field, default, help_text, flag_values=fv)
    elif kind == Optional[list[str]]:
      flags.DEFINE_list(field, default, help_text, flag_values=fv)
    else:  # a new Options field type: extend this table (tests/test_build.py checks coverage)
      raise TypeError(f"no flag type for Options.{field}: {kind}")


def parse_fractions(text: str) -> Dict[str, float]:
  """'train=0.7,val=0.15,test=0.15' -> {'train': 0.7, ...}, checked like assign_splits does."""
  out = {}
  for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
    name, eq, value = part.partition("=")
    name = name.strip()
    try:
      fraction = float(value)
    except ValueError:
      fraction = None
    if not eq or not name or fraction is None:
      raise BuildError(f"--split_fractions: {part!r} is not split=fraction; write e.g. "
                       "--split_fractions=train=0.7,val=0.15,test=0.15")
    if name in out:
      raise BuildError(f"--split_fractions: split {name!r} given twice in {text!r}")
    out[name] = fraction
  if not out:
    raise BuildError("--split_fractions is empty; write e.g. "
                     "--split_fractions=train=0.7,val=0.15,test=0.15")
  try:  # the same checks the real assignment makes, before any data is read
    splits.assign_splits([str(i) for i in range(len(out))], out)
  except ValueError as e:
    raise BuildError(f"--split_fractions={text}: {e}") from None
  return out


def _options(fv) -> Options:
  values = {field: fv[field].value for field, _ in OPTION_FLAGS}
  if values["class_names"] is not None and not values["class_names"]:
    values["class_names"] = None     # --class_names= (empty) means "not given"
  try:
    return Options(**values)
  except ValueError as e:
    raise BuildError(f"{e}; see python -m data_prep.build --help") from None


def _check_target(data_dir: str, name: str, overwrite: bool) -> None:
  """Refuses bad names, an existing dataset without --overwrite, and unwritable data_dirs."""
  if not name:
    raise BuildError("--name is required: the dataset's name, e.g. --name=my_cells")
  if "/" in name or os.sep in name or name.startswith(".") or name.strip() != name:
    raise BuildError(f"--name={name!r} must be a plain folder name (no '/', not hidden, no "
                     "surrounding spaces); the dataset goes to --data_dir")
  if name.startswith(RESERVED_PREFIX):
    raise BuildError(f"--name={name!r}: names starting with {RESERVED_PREFIX!r} are reserved "
                     "for the embedded synthetic datasets; choose another --name")
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise BuildError(f"--data_dir {data_dir} is a file, not a folder; choose a folder")
  target = os.path.join(data_dir, name)
  if os.path.lexists(target):
    if not overwrite:
      raise BuildError(f"dataset {name!r} already exists in {data_dir}; pass --overwrite to "
                       "replace it, or choose another --name")
    if not tfds_writer.exists(data_dir, name):
      raise BuildError(f"{target} exists but is not a dataset built by data_prep.build (no "
                       f"{tfds_writer.META_FILE}); refusing to overwrite it: move it away or "
                       "choose another --name")
  # The nearest existing ancestor must be writable (the writer creates data_dir if needed).
  probe = data_dir
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.access(probe, os.W_OK | os.X_OK):
    raise BuildError(f"--data_dir {data_dir}: no write permission on {probe}; choose a "
                     "writable --data_dir or set $CELLVIT_DATA")


def _check_input(kind: str, input_path: str) -> str:
  if kind == "ihc_demo":
    return input_path          # '' = the image bundled with scikit-image
  if not input_path:
    raise BuildError(f"--input is required for --source={kind}: {INPUT_HELP[kind]}")
  path = os.path.abspath(os.path.expanduser(input_path))
  if not os.path.exists(path):
    raise BuildError(f"--input {path} does not exist; give {INPUT_HELP[kind]}")
  return path


def class_table(class_names: Sequence[str], split_parts: Dict[str, List[dict]]) -> str:
  """Per-split, per-class patch counts (plus specimens and totals) as aligned text."""
  header = ["split"] + list(class_names) + ["total", "specimens"]
  rows, totals = [], [0] * len(class_names)
  for split, examples in split_parts.items():
    counts = [0] * len(class_names)
    for e in examples:
      counts[e["label"]] += 1
    totals = [a + b for a, b in zip(totals, counts)]
    rows.append([split] + counts + [len(examples), len({e["specimen"] for e in examples})])
  all_specimens = {e["specimen"] for ex in split_parts.values() for e in ex}
  rows.append(["all"] + totals + [sum(totals), len(all_specimens)])
  cells = [[str(c) for c in r] for r in [header] + rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(r, widths))) for r in cells]
  return "\n".join(lines)


@dataclasses.dataclass
class BuildResult:
  path: str                      # <data_dir>/<name>/1.0.0
  data_dir: str
  name: str
  class_names: List[str]
  counts: Dict[str, List[int]]   # split -> per-class patch counts
  skipped: int
  assignment: Dict[str, str]     # specimen -> split


def run(*, source: str, input_path: str, name: str, data_dir: str = "", overwrite: bool = False,
        split_fractions: str = "train=0.7,val=0.15,test=0.15", split_seed: int = 0,
        description: str = "", options: Optional[Options] = None, stdout=None,
        stderr=None) -> BuildResult:
  """The build; raises BuildError / SourceError / OSError on bad input (see `build`)."""
  stdout = stdout or sys.stdout
  stderr = stderr or sys.stderr
  options = options or Options()
  if source not in sources.KINDS:
    raise BuildError(f"--source={source!r} is not a source kind; valid: "
                     f"{', '.join(sorted(sources.KINDS))}")
  data_dir = datasets.resolve_data_dir(data_dir)
  fractions = parse_fractions(split_fractions)
  input_path = _check_input(source, input_path)
  _check_target(data_dir, name, overwrite)

  data = sources.read(source, input_path, options)
  if not data.examples:
    raise BuildError(f"--source={source} --input={input_path}: no patches read "
                     f"({len(data.skipped)} input(s) skipped)")
  present = sorted({e["label"] for e in data.examples})
  if len(present) < 2:  # training would reach accuracy 1 by construction
    shown = ", ".join(repr(data.class_names[c]) for c in present)
    where = f"--source={source}" + (f" --input={input_path}" if input_path else "")
    raise BuildError(f"{where}: all {len(data.examples)} "
                     f"patches are of one class ({shown}); a classifier needs at least two "
                     f"classes: {CLASSES_HELP[source]}")
  if data.info.get("specimen_warning"):
    print(f"warning: {data.info['specimen_warning']}", file=stderr)

  specimens = [e["specimen"] for e in data.examples]
  try:
    assignment = splits.assign_splits(specimens, fractions, seed=split_seed)
  except ValueError as e:
    raise BuildError(f"{e} (for --source={source}: {SPECIMEN_FLAGS[source]}; or "
                     "--split_fractions)") from None
  parts = splits.split_examples(data.examples, assignment)
  parts = {s: parts.get(s, []) for s in fractions}      # the order the user gave
  splits.check_disjoint({s: [e["specimen"] for e in ex] for s, ex in parts.items()})

  shown_input = input_path or f"{sources.ihc_demo.BUNDLED}()"
  info = {
      "built_by": "data_prep.build",
      "source_kind": source,
      "input": shown_input,
      "options": dataclasses.asdict(options),
      "split": {"unit": "specimen", "fractions": fractions, "seed": split_seed,
                "specimen_to_split": dict(sorted(assignment.items()))},
      "reader_info": data.info,
      "skipped": len(data.skipped),
      "skipped_inputs": [list(s) for s in data.skipped[:MAX_SKIPPED_LISTED]],
  }
  description = description or (f"Cell patches ({options.patch_size}x{options.patch_size}) "
                                f"from --source={source} {shown_input}, built by data_prep.build.")
  # Generators, so the writer streams and an interruption is an interruption mid-write.
  path = tfds_writer.write(
      data_dir, name, data.class_names, {s: iter(ex) for s, ex in parts.items()},
      patch_size=options.patch_size, description=description, info=info, overwrite=overwrite)

  counts = {s: [sum(1 for e in ex if e["label"] == c) for c in range(len(data.class_names))]
            for s, ex in parts.items()}
  print(class_table(data.class_names, parts), file=stdout)
  if data.skipped:
    print(f"skipped {len(data.skipped)} bad input(s) (--skip_bad); listed in "
          f"{tfds_writer.META_FILE} info.skipped_inputs", file=stdout)
  for c, name_c in enumerate(data.class_names):
    missing = [s for s in parts if counts[s][c] == 0]
    if missing:
      print(f"warning: class {name_c!r} has no patches in split(s) {missing}"
            + ("; training on 'train' refuses it (FlagLimit samples every class): try another "
               "--split_seed" if "train" in missing else ""), file=stderr)
  print(f"dataset {name!r}: {len(data.class_names)} classes, {len(data.examples)} patches, "
        f"written to {path}", file=stdout)
  if not {"train", "val", "test"} <= set(parts):
    print("note: training reads splits train/val/test by default; set "
          "--config.dataset.train_split / eval_split / test_split to yours", file=stdout)
  print(f"train on it: python -m cellvit_jax.main --config=configs/customvit.py "
        f"--config.dataset.name={name} --config.dataset.data_dir={data_dir}", file=stdout)
  return BuildResult(path=path, data_dir=data_dir, name=name, class_names=list(data.class_names),
                     counts=counts, skipped=len(data.skipped), assignment=assignment)


def run_from_flags(fv, stdout=None, stderr=None) -> int:
  """Runs the build the parsed flags describe; prints `error: ...` and returns 2 on bad input."""
  stderr = stderr or sys.stderr
  try:
    if fv.source is None:
      raise BuildError(f"--source is required; one of {', '.join(sorted(sources.KINDS))}")
    run(source=fv.source, input_path=fv.input, name=fv.name or "", data_dir=fv.data_dir,
        overwrite=fv.overwrite, split_fractions=fv.split_fractions, split_seed=fv.split_seed,
        description=fv.description, options=_options(fv), stdout=stdout, stderr=stderr)
  except (BuildError, SourceError, FileExistsError, PermissionError) as e:
    print(f"error: {_one_line(e)}", file=stderr)
    return EXIT_BAD_INPUT
  except ValueError as e:      # e.g. the writer's empty-split check
    print(f"error: {_one_line(e)}", file=stderr)
    return EXIT_BAD_INPUT
  except OSError as e:         # disk full, read-only file system, ...
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: {e.strerror or e}{where} while building {fv.name!r} in "
          f"{fv.data_dir or 'the default data_dir'}; nothing was written; free space or choose "
          "another --data_dir", file=stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt:
    print(f"error: interrupted; nothing was written (an existing dataset {fv.name!r} is "
          "untouched); run the command again", file=stderr)
    return EXIT_INTERRUPTED
  return 0


def _one_line(e) -> str:
  return " ".join(str(e).split())


def build(argv: Sequence[str], stdout=None, stderr=None) -> int:
  """The CLI in-process: build(['--source=folder', '--input=...', '--name=x']) -> exit status."""
  stderr = stderr or sys.stderr
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    rest = fv(["data_prep.build"] + list(argv))
  except flags.Error as e:
    print(f"error: {_one_line(e)}; see python -m data_prep.build --help", file=stderr)
    return EXIT_BAD_INPUT
  if len(rest) > 1:
    print(f"error: unexpected arguments {rest[1:]}; every option is a --flag=value",
          file=stderr)
    return EXIT_BAD_INPUT
  return run_from_flags(fv, stdout=stdout, stderr=stderr)


def _parse_flags(argv):
  """absl parsing for app.run with a one-line error and exit 2 instead of a usage dump."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_one_line(e)}; see python -m data_prep.build --help", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def main(argv):
  from absl import logging
  logging.set_verbosity(logging.WARNING)   # TFDS narrates its writing at INFO
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; every option is a --flag=value",
          file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  sys.exit(run_from_flags(flags.FLAGS))


if __name__ == "__main__":
  from absl import app
  define_flags(flags.FLAGS)
  app.run(main, flags_parser=_parse_flags)
