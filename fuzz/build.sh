#!/bin/bash -eu
# OSS-Fuzz / ClusterFuzzLite build script (Python projects): install the package, then
# package every fuzz/<name>_fuzzer.py with its seed corpus.
pip3 install .
for fuzzer in $(find "$SRC/devmodels/fuzz" -name '*_fuzzer.py'); do
  name=$(basename -s .py "$fuzzer")
  compile_python_fuzzer "$fuzzer" --add-data "$SRC/devmodels/fuzz:fuzz"
  target=${name%_fuzzer}
  if [ -d "$SRC/devmodels/fuzz/corpus/$target" ]; then
    (cd "$SRC/devmodels/fuzz/corpus/$target" && zip -q "$OUT/${name}_seed_corpus.zip" ./*)
  fi
done
