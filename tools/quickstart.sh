#!/usr/bin/env bash
# fc-caffe quickstart: Caffe's LeNet on Fashion-MNIST, from the IDX files to a trained model.
#
#   bash tools/quickstart.sh [extra `fc-caffe train` flags]
#
# 1. finds Fashion-MNIST (Debian's package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist;
#    FASHION_MNIST_DIR=... points elsewhere), installing the package when missing and root;
# 2. converts it to LMDBs under data/fashion_mnist/ with `fc-caffe convert_mnist_data`;
# 3. trains models/lenet_fashion/lenet_solver.prototxt, printing the test accuracy as it goes;
#    the full log is data/fashion_mnist/lenet_fashion_train.log (tools/parse_log.py reads it).
set -euo pipefail

cd "$(dirname "$0")/.."
SRC="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
OUT=data/fashion_mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

have_data() {
  for f in $FILES; do [ -f "$SRC/$f" ] || return 1; done
}

if ! have_data; then
  if [ -z "${FASHION_MNIST_DIR:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "quickstart: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  fi
fi
if ! have_data; then
  echo "quickstart: Fashion-MNIST not found in $SRC." >&2
  echo "  Install it with:  sudo apt-get install dataset-fashion-mnist" >&2
  echo "  or put $FILES in a folder and run:  FASHION_MNIST_DIR=/that/folder bash tools/quickstart.sh" >&2
  exit 1
fi

if command -v fc-caffe >/dev/null; then
  FC=(fc-caffe)
else
  FC=(python3 -m pycaffe_fc)
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

mkdir -p "$OUT"
for split in train t10k; do
  name=$([ $split = train ] && echo train || echo test)
  db="$OUT/fashion_mnist_${name}_lmdb"
  if [ ! -f "$db/data.mdb" ]; then
    rm -rf "$db"
    echo "quickstart: converting $split to $db"
    "${FC[@]}" convert_mnist_data "$SRC/$split-images-idx3-ubyte.gz" "$SRC/$split-labels-idx1-ubyte.gz" "$db"
  fi
done

LOG="$OUT/lenet_fashion_train.log"
echo "quickstart: training LeNet (log: $LOG)"
start=$(date +%s)
set +e
"${FC[@]}" train --solver models/lenet_fashion/lenet_solver.prototxt "$@" 2>&1 | tee "$LOG" \
  | grep --line-buffered -E "Test net output #[0-9]+: accuracy|Iteration [0-9]+ \(|Optimization Done|rror"
status=${PIPESTATUS[0]}
set -e
end=$(date +%s)
if [ "$status" -ne 0 ]; then
  echo "quickstart: training failed (exit $status); see $LOG" >&2
  exit "$status"
fi
acc=$(grep -E "Test net output #[0-9]+: accuracy" "$LOG" | tail -1 | sed -E 's/.*accuracy = ([0-9.eE+-]+).*/\1/')
echo "quickstart: final test accuracy ${acc:-?} after $((end - start)) s"
