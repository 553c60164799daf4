"""Writes the example notebooks from the cell sources below (run: python examples/_build.py)."""

import sys
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

MONAI_TO_NIFTI = [
    ("md", "# From a MONAI dataset to a NIfTI prediction\nThe researcher's path with MONAI: NIfTI volumes loaded by "
           "`LoadImaged` into a MONAI dataset, a tiny encoder pretrained and fine-tuned for segmentation on it, then "
           "`domainfm.predict` on the next scan file. The card records the volumes' geometry (affine, spacing), so "
           "the prediction is written as NIfTI with the scan's own affine. Phantom CTs are written first; about 20 s "
           "on 2 CPU cores."),
    ("code", "from pathlib import Path\nimport nibabel as nib\nimport numpy as np\nimport torch\nimport domainfm\n\n"
             "torch.set_num_threads(2)\n\n\n"
             "def phantom(path, shape=(24, 24, 16), affine=np.diag([1.5, 1.5, 2.0, 1.0]), seed=0):\n"
             "    \"\"\"A CT-like volume (HU) with a bright lesion, and its mask, as NIfTI files.\"\"\"\n"
             "    r = np.random.default_rng(seed)\n"
             "    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing=\"ij\")\n"
             "    c = [r.uniform(6, s - 6) for s in shape]\n"
             "    mask = (((zz - c[0]) / 4) ** 2 + ((yy - c[1]) / 4) ** 2 + ((xx - c[2]) / 3) ** 2 < 1).astype(np.uint8)\n"
             "    Path(path).parent.mkdir(parents=True, exist_ok=True)\n"
             "    nib.save(nib.Nifti1Image((r.normal(-50, 25, shape) + 250 * mask).astype(np.float32), affine), f\"{path}.nii.gz\")\n"
             "    nib.save(nib.Nifti1Image(mask, affine), f\"{path}_mask.nii.gz\")\n"
             "    return {\"image\": f\"{path}.nii.gz\", \"label\": f\"{path}_mask.nii.gz\"}\n\n\n"
             "cases = [phantom(f\"ct/case{i}\", seed=i) for i in range(8)]\ncases[0]"),
    ("md", "## 1. A MONAI dataset, as you would build it\nDictionary transforms load the files into `MetaTensor`s "
           "(the affine and spacing travel with them); `CacheDataset` keeps the loaded volumes in memory."),
    ("code", "from monai.data import CacheDataset\nfrom monai.transforms import Compose, LoadImaged, Orientationd\n\n"
             "load = Compose([LoadImaged([\"image\", \"label\"], ensure_channel_first=True), "
             "Orientationd([\"image\", \"label\"], \"RAS\")])\n"
             "train = CacheDataset(cases[:6], load, progress=False)\nval = CacheDataset(cases[6:], load, progress=False)\n"
             "volume = train[0][\"image\"]\ntype(volume).__name__, tuple(volume.shape), volume.pixdim.tolist()"),
    ("md", "## 2. Pretrain and fine-tune on it\nThe dataset goes in as `data=`; the card records its statistics "
           "and its geometry: a `medical` volume, so NIfTI files and MetaTensors are what the model predicts on."),
    ("code", "TINY = {\"model\": {\"patch_size\": 8, \"depth\": 2, \"embed_dim\": 64, \"num_heads\": 2},\n"
             "        \"train\": {\"steps\": 8, \"batch_size\": 4, \"lr\": 1e-3, \"warmup_steps\": 2, \"tensorboard\": False}}\n"
             "ckpt = domainfm.pretrain({\"out\": \"runs/ct\", **TINY}, data=train, exist_ok=\"overwrite\")\n"
             "seg = domainfm.finetune(ckpt, task=\"segmentation\", data=train, val_data=val, out=\"runs/ct-seg\",\n"
             "                        overrides=[\"train.steps=30\", \"train.lr=5e-3\", \"finetune.head_options={channels: 16}\"],\n"
             "                        exist_ok=\"overwrite\")\nmodel = domainfm.load(seg)\nmodel"),
    ("code", "model.card[\"preprocessing\"][\"geometry\"]"),
    ("md", "## 3. Predict on the next scan file\nAnother size and orientation (x flipped): it is put on the training "
           "orientation and spacing, normalised with the card's statistics, predicted by MONAI's sliding window, and "
           "written back on its own grid."),
    ("code", "nxt = phantom(\"new/next\", shape=(32, 28, 20), affine=np.diag([-1.5, 1.5, 2.0, 1.0]), seed=42)\n"
             "out = domainfm.predict(seg, nxt[\"image\"], \"new/next_seg.nii.gz\", exist_ok=True)\n"
             "pred, scan = nib.load(out), nib.load(nxt[\"image\"])\n"
             "assert pred.shape == scan.shape and np.allclose(pred.affine, scan.affine)\n"
             "truth, labels = nib.load(nxt[\"label\"]).get_fdata(), np.asarray(pred.dataobj)\n"
             "out, pred.shape, f\"Dice {2 * (labels * truth).sum() / (labels.sum() + truth.sum()):.2f}\""),
    ("md", "A `MetaTensor` in memory predicts the same way; without `out=` the result comes back with its affine."),
    ("code", "from monai.transforms import LoadImage\n\n"
             "domainfm.predict(seg, LoadImage(ensure_channel_first=True)(nxt[\"image\"]))"),
    ("code", "from domainfm.viz import new_figure\n\n"
             "k = int(truth.sum((0, 1)).argmax())  # the axial slice with the most lesion\n"
             "fig = new_figure(figsize=(7.5, 2.8))\n"
             "for i, (title, image) in enumerate([(\"scan (HU)\", scan.get_fdata()), (\"lesion\", truth), (\"prediction\", labels)]):\n"
             "    ax = fig.add_subplot(1, 3, i + 1)\n"
             "    ax.imshow(image[:, :, k].T, cmap=\"gray\", origin=\"lower\")\n"
             "    ax.set_title(title)\n    ax.axis(\"off\")\nfig"),
]

TORCHGEO_TO_GEOTIFF = [
    ("md", "# From a TorchGeo dataset to a GeoTIFF prediction\nThe researcher's path with TorchGeo: GeoTIFF scenes "
           "and their label rasters as `RasterDataset`s, sampled at random locations by a `RandomGeoSampler`, a tiny "
           "encoder pretrained and fine-tuned for segmentation on them, then `domainfm.predict` on another scene. The "
           "card records the CRS and resolution, so the prediction is a GeoTIFF with the scene's own CRS and "
           "transform. The scenes are written first; about 20 s on 2 CPU cores."),
    ("code", "from pathlib import Path\nimport numpy as np\nimport rasterio\nimport torch\nfrom rasterio.transform import from_origin\n"
             "import domainfm\n\ntorch.set_num_threads(2)\n\n\n"
             "def scene(name, origin, size=64, seed=0):\n"
             "    \"\"\"A 3-band uint16 GeoTIFF (EPSG:32633, 10 m) with bright fields, and the field mask as a label raster.\"\"\"\n"
             "    r = np.random.default_rng(seed)\n    fields = np.zeros((size, size), np.uint8)\n"
             "    for _ in range(6):\n        y, x = r.integers(0, size - 14, 2)\n"
             "        fields[y : y + r.integers(8, 14), x : x + r.integers(8, 14)] = 1\n"
             "    bands = r.normal(900, 60, (3, size, size)) + np.array([300, 700, 1200])[:, None, None] * fields\n"
             "    grid = {\"driver\": \"GTiff\", \"width\": size, \"height\": size, \"crs\": \"EPSG:32633\", "
             "\"transform\": from_origin(*origin, 10, 10)}\n"
             "    for folder, array in ((\"images\", bands.astype(np.uint16)), (\"labels\", fields[None])):\n"
             "        Path(folder).mkdir(exist_ok=True)\n"
             "        with rasterio.open(f\"{folder}/{name}.tif\", \"w\", count=len(array), dtype=array.dtype, **grid) as dst:\n"
             "            dst.write(array)\n"
             "    return f\"images/{name}.tif\", f\"labels/{name}.tif\"\n\n\n"
             "[scene(f\"tile{i}\", (500000 + 640 * i, 4600000), seed=i) for i in range(3)]"),
    ("md", "## 1. A TorchGeo dataset, as you would build it\nImages and labels intersect into one dataset of "
           "sample dicts (`image`, `mask`, `crs`, `bounds`); the sampler picks 32 x 32 px windows."),
    ("code", "from torchgeo.datasets import RasterDataset\nfrom torchgeo.samplers import RandomGeoSampler\n\n\n"
             "class Fields(RasterDataset):\n    is_image = False\n\n\n"
             "images = RasterDataset(paths=\"images\")\npairs = images & Fields(paths=\"labels\")\n"
             "sampler = RandomGeoSampler(pairs, size=32, length=64, generator=torch.Generator().manual_seed(0))\n"
             "images.res, sorted(pairs[next(iter(sampler))])"),
    ("md", "## 2. Pretrain and fine-tune on it\nThe card records the CRS, resolution and band statistics: a "
           "`remote_sensing` scene, so GeoTIFFs and TorchGeo samples are what the model predicts on."),
    ("code", "TINY = {\"model\": {\"patch_size\": 8, \"depth\": 2, \"embed_dim\": 64, \"num_heads\": 2},\n"
             "        \"train\": {\"steps\": 8, \"batch_size\": 8, \"lr\": 1e-3, \"warmup_steps\": 2, \"tensorboard\": False}}\n"
             "ckpt = domainfm.pretrain({\"out\": \"runs/fields\", **TINY}, data=images, sampler=sampler, exist_ok=\"overwrite\")\n"
             "seg = domainfm.finetune(ckpt, task=\"segmentation\", data=pairs, sampler=sampler, out=\"runs/fields-seg\",\n"
             "                        overrides=[\"train.steps=30\", \"train.lr=5e-3\", \"finetune.head_options={channels: 16}\"],\n"
             "                        exist_ok=\"overwrite\")\nmodel = domainfm.load(seg)\nmodel"),
    ("code", "model.card[\"preprocessing\"][\"geometry\"]"),
    ("md", "## 3. Predict on another scene\nRead in windows with overlap, normalised with the card's statistics, "
           "blended and written as a GeoTIFF on the scene's grid."),
    ("code", "image, label = scene(\"elsewhere\", (520000, 4610000), size=80, seed=7)\n"
             "out = domainfm.predict(seg, image, \"pred/elsewhere_fields.tif\", exist_ok=True)\n"
             "with rasterio.open(out) as pred, rasterio.open(image) as src, rasterio.open(label) as lab:\n"
             "    assert pred.crs == src.crs and pred.transform == src.transform\n"
             "    labels, truth, rgb = pred.read(1), lab.read(1), src.read()\n"
             "out, labels.shape, f\"Dice {2 * (labels * truth).sum() / (labels.sum() + truth.sum()):.2f}\""),
    ("md", "A sample dict from the dataset predicts the same way; without `out=` the result comes back with its "
           "CRS and transform."),
    ("code", "domainfm.predict(seg, pairs[next(iter(sampler))])"),
    ("code", "from domainfm.viz import new_figure\n\n"
             "fig = new_figure(figsize=(7.5, 2.8))\n"
             "stretch = (rgb[::-1] - rgb.min((1, 2), keepdims=True)) / np.ptp(rgb, (1, 2), keepdims=True)\n"
             "for i, (title, picture) in enumerate([(\"scene (bands 3-2-1)\", stretch.transpose(1, 2, 0)), "
             "(\"fields\", truth), (\"prediction\", labels)]):\n"
             "    ax = fig.add_subplot(1, 3, i + 1)\n    ax.imshow(picture, cmap=\"gray\")\n"
             "    ax.set_title(title)\n    ax.axis(\"off\")\nfig"),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "medical.ipynb": MEDICAL, "remote_sensing.ipynb": REMOTE_SENSING,
             "pathology.ipynb": PATHOLOGY, "monai_to_nifti.ipynb": MONAI_TO_NIFTI,
             "torchgeo_to_geotiff.ipynb": TORCHGEO_TO_GEOTIFF}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":  # python examples/_build.py [NAME.ipynb ...]: those notebooks only (default: all)
    for name, cells in NOTEBOOKS.items():
        if len(sys.argv) == 1 or name in sys.argv[1:]:
            nbformat.write(build(cells), HERE / name)
