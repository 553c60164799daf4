"""Writes the example notebooks from the cell sources below (run: python examples/_build.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    ("md", "# domainfm quickstart\nPretrain a tiny encoder, look at it, fine-tune it and embed data held in memory. "
           "Every cell can be run again (`exist_ok=\"overwrite\"`). Runs in well under a minute on 2 CPU cores."),
    ("code", "import numpy as np\nimport torch\nimport domainfm\n\ntorch.set_num_threads(2)\n"
             "TINY = {\"model\": {\"patch_size\": 8, \"depth\": 2, \"embed_dim\": 64, \"num_heads\": 2},\n"
             "        \"train\": {\"steps\": 12, \"batch_size\": 16, \"lr\": 1e-3, \"warmup_steps\": 3, \"tensorboard\": False}}"),
    ("md", "## 1. Pretrain on the built-in shapes domain\nThe bar stays, and one line sums the run up."),
    ("code", "ckpt = domainfm.pretrain({\"domain\": \"synthetic\", \"out\": \"runs/quickstart\", \"data\": {\"img_size\": 32},\n"
             "                          **TINY}, exist_ok=\"overwrite\")\nmodel = domainfm.load(ckpt)\nmodel"),
    ("md", "## 2. Data held in memory\nA numpy array of 8-bit images: the statistics are computed and stored in the card."),
    ("code", "from domainfm.synthetic import ShapesDataset\n"
             "shapes = ShapesDataset(64, size=32, channels=3, seed=1)\n"
             "images = np.stack([np.clip(shapes[i][\"image\"].numpy() * 80 + 128, 0, 255) for i in range(64)]).astype(np.uint8)\n"
             "labels = np.array([shapes[i][\"label\"] for i in range(64)])\n"
             "arrays_ckpt = domainfm.pretrain({\"out\": \"runs/arrays\", **TINY}, data=images, exist_ok=\"overwrite\")\n"
             "arrays_model = domainfm.load(arrays_ckpt)\narrays_model"),
    ("code", "z = arrays_model.embed(images[:4])          # numpy in: the card's preprocessing is applied\nz.shape"),
    ("md", "## 3. Fine-tune with labels in memory, then embed into a DataFrame"),
    ("code", "clf = domainfm.finetune(arrays_ckpt, task=\"classification\", data=images[:48], labels=labels[:48],\n"
             "                        val_data=images[48:], val_labels=labels[48:], out=\"runs/arrays-cls\",\n"
             "                        exist_ok=\"overwrite\")\ndomainfm.load(clf)"),
    ("code", "frame = domainfm.embed(arrays_ckpt, images, labels=labels)\nframe.iloc[:3, :6]"),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
