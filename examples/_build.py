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

DATA = ("from pathlib import Path\nfrom domainfm.demo import sample_data\n"
        "DATA = sample_data() or Path(\"shared-data-absent\")   # $DOMAINFM_DATA, else ../shared/data beside the repo")

MEDICAL = [
    ("md", "# Medical: chest X-rays held in memory\nPneumoniaMNIST (28x28 uint8, shared sample data) as numpy "
           "arrays: pretrain, look at the card, then compare with a random-init encoder by a kNN probe."),
    ("code", "import numpy as np\nimport torch\nimport domainfm\n" + DATA + "\ntorch.set_num_threads(2)\n"
             "d = np.load(DATA / \"medical\" / \"pneumoniamnist.npz\")\nrng = np.random.default_rng(0)\n"
             "i = rng.choice(len(d[\"train_images\"]), 256, replace=False)\n"
             "j = rng.choice(len(d[\"test_images\"]), 128, replace=False)\n"
             "x, y = d[\"train_images\"][i], d[\"train_labels\"][i, 0]\n"
             "x_test, y_test = d[\"test_images\"][j], d[\"test_labels\"][j, 0]\nx.shape, x.dtype"),
    ("code", "ckpt = domainfm.pretrain({\"out\": \"runs/xray\", \"model\": {\"patch_size\": 7, \"depth\": 2, "
             "\"embed_dim\": 64, \"num_heads\": 2},\n"
             "                          \"train\": {\"steps\": 20, \"batch_size\": 32, \"tensorboard\": False}},\n"
             "                         data=x, exist_ok=\"overwrite\")\nmodel = domainfm.load(ckpt)\nmodel"),
    ("md", "0-255 input is what the model saw; a [0, 1] image is converted with a warning, never silently mis-scaled."),
    ("code", "import warnings\nwith warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter(\"always\")\n"
             "    z = model.embed(x_test[:4] / 255.0)\nz.shape, str(caught[0].message)[:80]"),
    ("code", "result = domainfm.evaluate(ckpt, x, labels=y, test_data=x_test, test_labels=y_test, protocol=\"knn\",\n"
             "                           seeds=1, fractions=(1.0,), n_boot=100)\nresult"),
    ("code", "result.plot()"),
]

REMOTE_SENSING = [
    ("md", "# Remote sensing: a TorchGeo dataset over a GeoTIFF written from arrays\nThe eo-learn Slovenia patch "
           "(shared sample data): NDVI dates and elevation as a GeoTIFF in EPSG:32633, read back by TorchGeo, "
           "sampled at random locations; CRS and resolution go into the checkpoint card."),
    ("code", "import json\nimport numpy as np\nimport torch\nimport domainfm\n"
             "from domainfm.remote_sensing import array_to_geotiff\n" + DATA + "\ntorch.set_num_threads(2)\n"
             "patch = DATA / \"remote_sensing\" / \"eolearn_slovenia\"\n"
             "ring = json.loads((patch / \"bbox.geojson\").read_text())[\"coordinates\"][0]\n"
             "xs, ys = [p[0] for p in ring], [p[1] for p in ring]\nbounds = (min(xs), min(ys), max(xs), max(ys))\n"
             "ndvi = np.load(patch / \"data\" / \"NDVI.npy\")[::17, ..., 0]          # 4 dates x 101 x 100\n"
             "Path(\"scenes\").mkdir(exist_ok=True)\n"
             "tif = array_to_geotiff(\"scenes/ndvi.tif\", np.nan_to_num(ndvi).astype(\"float32\"), \"EPSG:32633\", bounds)\ntif"),
    ("code", "from torchgeo.datasets import RasterDataset\nfrom torchgeo.samplers import RandomGeoSampler\n"
             "scenes = RasterDataset(paths=\"scenes\")\n"
             "sampler = RandomGeoSampler(scenes, size=32, length=48, generator=torch.Generator().manual_seed(0))\n"
             "scenes.crs, scenes.res"),
    ("code", "ckpt = domainfm.pretrain({\"out\": \"runs/ndvi\", \"model\": {\"patch_size\": 8, \"depth\": 2, "
             "\"embed_dim\": 64, \"num_heads\": 2},\n"
             "                          \"train\": {\"steps\": 12, \"batch_size\": 16, \"tensorboard\": False}},\n"
             "                         data=scenes, sampler=sampler, exist_ok=\"overwrite\")\n"
             "model = domainfm.load(ckpt)\nmodel"),
    ("code", "{k: model.card[\"preprocessing\"][k] for k in (\"crs\", \"res\", \"channels\", \"size\")}"),
    ("code", "frame = domainfm.embed(ckpt, scenes, sampler=sampler)\nframe.iloc[:3, :5]"),
]

PATHOLOGY = [
    ("md", "# Pathology: a real TCGA slide, its tiles and a heatmap\nThe slide carries no microns-per-pixel value, "
           "so it is given (`mpp=`). The tile grid shows its counts, MPP and level; the heatmap is a Figure."),
    ("code", "import numpy as np\nimport torch\nfrom PIL import Image\nimport domainfm\n"
             "from domainfm.pathology import heatmap_figure, tile_slide\n" + DATA + "\ntorch.set_num_threads(2)\n"
             "slide = DATA / \"pathology\" / \"tcga-cr-7395-01a-01-ts1.svs\"\n"
             "grid = tile_slide(slide, target_mpp=4.0, tile_size=32, mpp=0.5, min_tissue=0.3)\ngrid"),
    ("code", "heatmap_figure(slide, grid.coords, grid.size0, grid.tissue, normalize=\"none\", thumbnail_size=512)"),
    ("md", "Tiles held in memory (the shared PNG tiles, resized to 32 px) pretrain an encoder directly."),
    ("code", "paths = sorted((DATA / \"pathology\" / \"tiles\").glob(\"*.png\"))\n"
             "tiles = np.stack([np.asarray(Image.open(p).convert(\"RGB\").resize((32, 32))) for p in paths])\n"
             "ckpt = domainfm.pretrain({\"out\": \"runs/tiles\", \"model\": {\"patch_size\": 8, \"depth\": 2, "
             "\"embed_dim\": 64, \"num_heads\": 2},\n"
             "                          \"train\": {\"steps\": 12, \"batch_size\": 16, \"tensorboard\": False}},\n"
             "                         data=tiles, exist_ok=\"overwrite\")   # N x H x W x 3: read as channels-last\n"
             "domainfm.load(ckpt)"),
    ("code", "frame = domainfm.embed(ckpt, tiles.transpose(0, 3, 1, 2))\n"
             "frame.assign(tile=[p.stem for p in paths]).iloc[:4, [0, -1, 1, 2]]"),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "medical.ipynb": MEDICAL, "remote_sensing.ipynb": REMOTE_SENSING,
             "pathology.ipynb": PATHOLOGY}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
