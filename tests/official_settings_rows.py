"""The official settings of every method x dataset preset: the rows of docs/official-settings.md.

One `Row` per setting: the official value with its file:line in the official code, the config
key (or `module:attr` code constant) that holds ours, and, where ours deliberately differs, our
value and the reason. `tests/test_official_settings.py` resolves each preset and compares, and
renders the docs table from these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The official code read for each method (repository @ commit).
SOURCES = {
    "cpcl": "leofansq/CPCL @ f0e1800",
    "sup": "leofansq/CPCL @ f0e1800 (the supervised baseline runs with the CPCL config)",
    "cps": "charlesCXK/TorchSemiSeg @ 5e0c29c, `exp.voc/voc8.res50v3+.CPS+CutMix/`, "
    "`exp.city/city8.res50v3+.CPS+CutMix/`",
    "u2pl": "Haochen-Wang409/U2PL @ ab3d2be",
    "unimatch": "LiheYoung/UniMatch @ 0324f3d",
    "cosa": "youshyee/CoSA @ 01d3467",
}
DATASETS = {"voc": "PASCAL VOC 2012", "cityscapes": "Cityscapes", "coco": "COCO-2014"}
WEIGHTS_NOTE = "same file, kept under DATA/pytorch-weight/ (datasets.md, Pretrained weights)"

SAME = object()  # ours equals the official value


@dataclass(frozen=True)
class Row:
    """One official setting of one method on one dataset.

    ours_key: a config key of the resolved preset, or `module:attr.attr` for a code constant.
    ours: our value where it is not the official one (then `note` says why), else SAME.
    file_stem: compare the file name of a path with the official file's stem (weights files,
    whose folder is the project's choice).
    """

    method: str
    dataset: str
    key: str
    official: Any
    source: str
    ours_key: str
    ours: Any = SAME
    note: str = ""
    file_stem: bool = False

    @property
    def expected(self) -> Any:
        """Our value the test expects."""
        return self.official if self.ours is SAME else self.ours

    @property
    def id(self) -> str:
        return f"{self.method}-{self.dataset}-{self.key}"


def _group(method: str, dataset: str, rows: list[tuple]) -> list[Row]:
    out = []
    for r in rows:
        key, official, source, ours_key, *rest = r
        ours = rest[0] if rest else SAME
        note = rest[1] if len(rest) > 1 else ""
        out.append(Row(method, dataset, key, official, source, ours_key, ours, note))
    return out


def _weights(method: str, dataset: str, file: str, source: str, note: str = "") -> Row:
    return Row(
        method, dataset, "pretrained file", file, source, "pretrained_model", SAME, note, True
    )


# Notes shared by several rows.
_EQ_PER_RANK = "same at the official launch: ours is per image x the batch one process sees"
_CPCL_CPS = (
    "deliberate: CPS runs as the CPCL paper's baseline, with the CPCL settings "
    "(docs/methods/cps.md); set it with --key=value for TorchSemiSeg's own run"
)
_U2PL_SPLIT = (
    "deliberate: labeled_ratio picks the CPS lists; point --train_source/--unsup_source at "
    "U2PL's lists (docs/methods/u2pl.md)"
)
_MEAN_255 = "equivalent: U2PL's mean/std on 0..255 pixels are ImageNet's x 255"


def _cpcl_voc(method: str) -> list[tuple]:
    return [
        ("lr", 0.005, "exp_voc/config.py:93", "lr"),
        ("batch_size (1 process: `python train.py`)", 8, "exp_voc/config.py:98", "batch_size"),
        ("lr_power (poly)", 0.9, "exp_voc/config.py:100", "lr_power"),
        ("momentum", 0.9, "exp_voc/config.py:101", "momentum"),
        ("weight_decay", 1e-4, "exp_voc/config.py:102", "weight_decay"),
        ("bn_eps", 1e-5, "exp_voc/config.py:104", "bn_eps"),
        ("bn_momentum", 0.1, "exp_voc/config.py:105", "bn_momentum"),
        ("warm_up_epoch", 0, "exp_voc/config.py:112", "warm_up_epoch"),
        ("nepochs (1/8)", 34, "exp_voc/config.py:63", "nepochs"),
        ("labeled_ratio", 8, "exp_voc/config.py:62", "labeled_ratio"),
        ("image_height x image_width", 512, "exp_voc/config.py:83-84", "image_height"),
        ("num_train_imgs = 10582 // 8", 1322, "exp_voc/config.py:85", "num_train_imgs"),
        ("num_unsup_imgs", 9260, "exp_voc/config.py:87", "num_unsup_imgs"),
        ("niters_per_epoch = 9260 // 8", 1157, "exp_voc/config.py:109", "niters_per_epoch"),
        (
            "train_scale_array",
            (0.5, 0.75, 1, 1.5, 1.75, 2.0),
            "exp_voc/config.py:111",
            "train_scale_array",
        ),
        ("image_mean", (0.485, 0.456, 0.406), "exp_voc/config.py:81", "image_mean"),
        ("image_std", (0.229, 0.224, 0.225), "exp_voc/config.py:82", "image_std"),
        ("num_classes", 21, "exp_voc/config.py:79", "num_classes"),
        ("background", 0, "exp_voc/config.py:80", "background"),
        ("ignore index (CE)", 255, "exp_voc/train.py:69", "ignore_index"),
        ("supervised loss", "ce", "exp_voc/train.py:69", "sup_loss"),
        ("backbone (deep stem)", "resnet50", "exp_voc/network.py:31-34", "backbone"),
        ("eval_crop_size", 512, "exp_voc/config.py:119", "eval_crop_size"),
        ("eval_stride_rate", 2 / 3, "exp_voc/config.py:116", "eval_stride_rate"),
        ("eval_scale_array", (1,), "exp_voc/config.py:117", "eval_scale_array"),
        ("eval_flip", False, "exp_voc/config.py:118", "eval_flip"),
        ("seed", 12345, "exp_voc/config.py:60", "seed"),
    ]


def _cpcl_city(method: str) -> list[tuple]:
    return [
        ("lr", 0.01, "exp_city/config.py:95", "lr"),
        ("batch_size (1 process)", 16, "exp_city/config.py:100", "batch_size"),
        ("lr_power (poly)", 0.9, "exp_city/config.py:102", "lr_power"),
        ("momentum", 0.9, "exp_city/config.py:103", "momentum"),
        ("weight_decay", 1e-4, "exp_city/config.py:104", "weight_decay"),
        ("warm_up_epoch", 0, "exp_city/config.py:114", "warm_up_epoch"),
        ("nepochs (1/8)", 137, "exp_city/config.py:63", "nepochs"),
        ("image_height x image_width", 800, "exp_city/config.py:85-86", "image_height"),
        ("niters_per_epoch = 2604 // 16", 162, "exp_city/config.py:111", "niters_per_epoch"),
        (
            "train_scale_array",
            (0.5, 0.75, 1, 1.5, 1.75, 2.0),
            "exp_city/config.py:113",
            "train_scale_array",
        ),
        ("num_classes", 19, "exp_city/config.py:81", "num_classes"),
        ("supervised loss: ProbOhemCrossEntropy2d", "ohem", "exp_city/train.py:70", "sup_loss"),
        ("OHEM thresh", 0.7, "exp_city/train.py:70", "ohem_thresh"),
        (
            "OHEM min_kept = 50000 x batch_size",
            50000,
            "exp_city/train.py:69",
            "ohem_min_kept_per_image",
            SAME,
            _EQ_PER_RANK,
        ),
        ("backbone", "resnet50", "exp_city/network.py:30", "backbone"),
        ("eval_crop_size", 800, "exp_city/config.py:121", "eval_crop_size"),
        ("eval_scale_array", (1,), "exp_city/config.py:119", "eval_scale_array"),
        ("seed", 12345, "exp_city/config.py:60", "seed"),
    ]


def _cpcl_family(method: str, unsup: bool) -> list[Row]:
    rows = _group(method, "voc", _cpcl_voc(method)) + _group(
        method, "cityscapes", _cpcl_city(method)
    )
    if unsup:
        rows += _group(
            method, "voc", [("unsup_weight", 1, "exp_voc/config.py:106", "unsup_weight")]
        )
        rows += _group(
            method, "cityscapes", [("unsup_weight", 5, "exp_city/config.py:108", "unsup_weight")]
        )
    for ds, cfg in (("voc", "exp_voc"), ("cityscapes", "exp_city")):
        rows.append(_weights(method, ds, "resnet50_v1c.pth", f"{cfg}/config.py:48"))
    return rows


_CPS_VOC = "exp.voc/voc8.res50v3+.CPS+CutMix"
_CPS_CITY = "exp.city/city8.res50v3+.CPS+CutMix"

CPS_ROWS = (
    _group(
        "cps",
        "voc",
        [
            ("learning_rate", 0.0025, f"{_CPS_VOC}/script.sh:10", "lr", 0.005, _CPCL_CPS),
            (
                "batch_size (global, 4 GPUs)",
                8,
                f"{_CPS_VOC}/script.sh:9, dataloader.py:91",
                "batch_size",
            ),
            ("cps_weight", 1, f"{_CPS_VOC}/config.py:73", "unsup_weight"),
            ("nepochs", 34, f"{_CPS_VOC}/config.py:108", "nepochs"),
            ("image_height x image_width", 512, f"{_CPS_VOC}/config.py:87-88", "image_height"),
            ("momentum", 0.9, f"{_CPS_VOC}/config.py:105", "momentum"),
            ("weight_decay", 1e-4, f"{_CPS_VOC}/config.py:106", "weight_decay"),
            ("lr_power", 0.9, f"{_CPS_VOC}/config.py:104", "lr_power"),
            ("niters_per_epoch = 9260 // 8", 1157, f"{_CPS_VOC}/config.py:111", "niters_per_epoch"),
            ("supervised loss", "ce", f"{_CPS_VOC}/train.py:95", "sup_loss"),
            ("eval_crop_size", 512, f"{_CPS_VOC}/config.py:122", "eval_crop_size"),
            ("seed", 12345, f"{_CPS_VOC}/config.py:20", "seed"),
        ],
    )
    + _group(
        "cps",
        "cityscapes",
        [
            ("learning_rate", 0.02, f"{_CPS_CITY}/script.sh:9", "lr", 0.01, _CPCL_CPS),
            (
                "batch_size (global, 8 GPUs)",
                8,
                f"{_CPS_CITY}/script.sh:10, dataloader.py:114",
                "batch_size",
                16,
                _CPCL_CPS,
            ),
            (
                "niters_per_epoch = 2604 // batch",
                325,
                f"{_CPS_CITY}/config.py:118",
                "niters_per_epoch",
                162,
                "follows the batch size (CPCL's 16)",
            ),
            ("cps_weight", 5, f"{_CPS_CITY}/config.py:78", "unsup_weight"),
            ("nepochs", 137, f"{_CPS_CITY}/config.py:115", "nepochs"),
            ("image_height x image_width", 800, f"{_CPS_CITY}/config.py:94-95", "image_height"),
            ("weight_decay", 1e-4, f"{_CPS_CITY}/config.py:113", "weight_decay"),
            ("supervised loss: OHEM", "ohem", f"{_CPS_CITY}/train.py:94", "sup_loss"),
            ("OHEM thresh", 0.7, f"{_CPS_CITY}/train.py:94", "ohem_thresh"),
            (
                "OHEM min_kept = 50000 x batch // world_size",
                50000,
                f"{_CPS_CITY}/train.py:93",
                "ohem_min_kept_per_image",
                SAME,
                _EQ_PER_RANK,
            ),
            ("eval_crop_size", 800, f"{_CPS_CITY}/config.py:129", "eval_crop_size"),
        ],
    )
    + [
        _weights("cps", "voc", "resnet50_v1c.pth", f"{_CPS_VOC}/config.py:55"),
        _weights("cps", "cityscapes", "resnet50_v1c.pth", f"{_CPS_CITY}/config.py:55"),
    ]
)
# CPS Cityscapes's OHEM has `use_weight=False` (train.py:95); ours uses CPCL's class weights
# (cpcl/losses.py build_sup_criterion): a code choice, listed in the docs' prose.

_U2V = "experiments/pascal/1464/ours/config.yaml"
_U2C = "experiments/cityscapes/744/ours/config.yaml"
_U2T = "train_semi.py"


def _u2pl_common(ds: str, cfg: str) -> list[tuple]:
    # The Cityscapes yaml has one more line (sup_only_epoch) before the optimiser block.
    def at(voc_line: int) -> str:
        return f"{cfg}:{voc_line + (ds != 'voc')}"

    return [
        ("lr_scheduler poly power", 0.9, at(39), "lr_power"),
        ("momentum", 0.9, at(34), "momentum"),
        ("ema_decay", 0.99, f"{cfg}:{68 if ds == 'voc' else 71}", "u2pl_ema_decay"),
        ("drop_percent", 80.0, at(42), "u2pl_drop_percent"),
        ("apply_aug", "cutmix", at(43), "u2pl_apply_aug"),
        ("contrastive low_rank", 3, at(46), "u2pl_low_rank"),
        ("contrastive high_rank", 20, at(47), "u2pl_high_rank"),
        ("current_class_threshold", 0.3, at(48), "u2pl_current_class_threshold"),
        (
            "current_class_negative_threshold",
            1.0,
            at(49),
            "u2pl_current_class_negative_threshold",
        ),
        ("low_entropy_threshold", 20.0, at(51), "u2pl_low_entropy_threshold"),
        ("num_negatives", 50, at(52), "u2pl_num_negatives"),
        ("num_queries", 256, at(53), "u2pl_num_queries"),
        ("temperature", 0.5, at(54), "u2pl_temperature"),
        ("memory bank keys per class", 30000, f"{_U2T}:167", "u2pl_queue_size"),
        ("memory bank keys, class 0", 50000, f"{_U2T}:169", "u2pl_queue_size_class0"),
        ("unsupervised loss_weight (default)", 1.0, f"{_U2T}:387", "u2pl_unsup_weight"),
        ("backbone", "resnet101", f"{cfg}:{70 if ds == 'voc' else 76}", "backbone"),
        (
            "mean (0..255)",
            (123.675, 116.28, 103.53),
            f"{cfg}:23",
            "image_mean",
            (0.485, 0.456, 0.406),
            _MEAN_255,
        ),
        (
            "std (0..255)",
            (58.395, 57.12, 57.375),
            f"{cfg}:24",
            "image_std",
            (0.229, 0.224, 0.225),
            _MEAN_255,
        ),
        ("ignore_label", 255, f"{cfg}:25", "ignore_index"),
        (
            "rand_resize",
            (0.5, 2.0),
            f"{cfg}:8",
            "train_scale_array",
            (0.5, 0.75, 1, 1.5, 1.75, 2.0),
            "deliberate: the project's transform draws one of six scales in [0.5, 2] "
            "(docs/methods/u2pl.md)",
        ),
        (
            "seed (train.sh --seed)",
            2,
            f"{cfg.rsplit('/', 1)[0]}/train.sh:15",
            "seed",
            12345,
            "the seed names our own random streams; it cannot reproduce the official draws",
        ),
    ]


U2PL_ROWS = (
    _group(
        "u2pl",
        "voc",
        [
            *_u2pl_common("voc", _U2V),
            ("lr (4 GPUs)", 0.001, f"{_U2V}:33", "lr"),
            ("weight_decay", 0.0001, f"{_U2V}:35", "weight_decay"),
            ("batch_size 4 per GPU x 4 GPUs", 16, f"{_U2V}:19,33", "batch_size"),
            ("epochs", 80, f"{_U2V}:28", "nepochs"),
            ("crop size", 513, f"{_U2V}:12", "image_height"),
            ("sup_only_epoch (code default)", 1, f"{_U2T}:205", "u2pl_sup_only_epoch"),
            ("head lr x times (pascal)", 10.0, f"{_U2T}:100", "u2pl_lr_head_times"),
            ("criterion", "ce", f"{_U2V}:60-63", "sup_loss"),
            ("aux loss", 0.0, f"{_U2V}:65-80 (none)", "u2pl_aux_loss_weight"),
            ("num_classes", 21, f"{_U2V}:66", "num_classes"),
            ("labeled list (n_sup)", 1464, f"{_U2V}:5,20", "num_train_imgs", 1322, _U2PL_SPLIT),
            ("evaluation: whole image, scale 1", "whole", "eval.py", "u2pl_eval_mode"),
            ("eval scales", (1.0,), "eval.py:34", "eval_scale_array"),
        ],
    )
    + _group(
        "u2pl",
        "cityscapes",
        [
            *_u2pl_common("cityscapes", _U2C),
            ("lr (8 GPUs)", 0.01, f"{_U2C}:34", "lr"),
            ("weight_decay", 0.0005, f"{_U2C}:36", "weight_decay"),
            ("batch_size 2 per GPU x 8 GPUs", 16, f"{_U2C}:19,34", "batch_size"),
            ("epochs", 200, f"{_U2C}:28", "nepochs"),
            ("crop size", 769, f"{_U2C}:12", "image_height"),
            ("sup_only_epoch", 0, f"{_U2C}:30", "u2pl_sup_only_epoch"),
            ("head lr x times (not pascal)", 1.0, f"{_U2T}:100", "u2pl_lr_head_times"),
            ("criterion", "ohem", f"{_U2C}:62-66", "sup_loss"),
            ("OHEM thresh", 0.7, f"{_U2C}:65", "ohem_thresh"),
            ("OHEM min_kept (per process)", 100000, f"{_U2C}:66", "u2pl_ohem_min_kept"),
            ("aux loss_weight", 0.4, f"{_U2C}:74", "u2pl_aux_loss_weight"),
            ("num_classes", 19, f"{_U2C}:69", "num_classes"),
            (
                "evaluation: sliding",
                "sliding",
                f"{_U2C.rsplit('/', 1)[0]}/eval.sh",
                "u2pl_eval_mode",
            ),
            ("eval base_size", 2048, f"{_U2C.rsplit('/', 1)[0]}/eval.sh", "u2pl_eval_base_size"),
            ("eval crop", 769, f"{_U2C}:18", "eval_crop_size"),
        ],
    )
    + [
        _weights("u2pl", ds, "resnet101.pth", "u2pl/models/resnet.py:20 (`/path/to/resnet101.pth`)")
        for ds in ("voc", "cityscapes")
    ]
)

_UMT = "unimatch.py"


def _unimatch(ds: str, cfg: str, v: dict[str, Any]) -> list[tuple]:
    return [
        ("nclass", v["nclass"], f"{cfg}:3", "num_classes"),
        ("crop_size", v["crop"], f"{cfg}:4", "image_height"),
        (
            "crop_size (also the eval window: sliding on Cityscapes, ours on VOC)",
            v["crop"],
            f"{cfg}:4",
            "eval_crop_size",
        ),
        ("epochs", v["epochs"], f"{cfg}:8", "nepochs"),
        ("batch_size 2 per GPU x 4 GPUs", 8, f"{cfg}:9", "batch_size"),
        ("lr (backbone)", v["lr"], f"{cfg}:10", "lr"),
        ("lr_multi (the rest)", v["lr_multi"], f"{cfg}:11", "unimatch_lr_multi"),
        ("criterion", v["crit"], f"{cfg}:12-13", "sup_loss"),
        ("conf_thresh", v["conf"], f"{cfg}:{v['conf_line']}", "unimatch_conf_thresh"),
        ("backbone", "resnet101", f"{cfg}:{v['bb_line']}", "backbone"),
        ("momentum", 0.9, f"{_UMT}:56", "momentum"),
        ("weight_decay", 1e-4, f"{_UMT}:56", "weight_decay"),
        ("poly power", 0.9, f"{_UMT}:206", "lr_power"),
        ("warm-up", 0, f"{_UMT}:206 (none)", "warm_up_epoch"),
        (
            "loss weights (x, s1, s2, fp, divisor)",
            (1.0, 0.25, 0.25, 0.5, 2.0),
            f"{_UMT}:188",
            "cpcl.methods.unimatch.losses:OFFICIAL_LOSS_WEIGHTS",
        ),
        ("resize ratio range", (0.5, 2.0), "dataset/semi.py:41", "unimatch_scale_range"),
        (
            "iterations per epoch: len(loader_u), drop_last, 1/8 split",
            v["iters"],
            f"{_UMT}:86-88,93",
            "niters_per_epoch",
        ),
        ("eval mode", v["eval"], f"{_UMT}:222", "unimatch_eval_mode"),
        ("ignore index", 255, f"{cfg}:15", "ignore_index"),
    ]


UNIMATCH_ROWS = (
    _group(
        "unimatch",
        "voc",
        _unimatch(
            "voc",
            "configs/pascal.yaml",
            {
                "nclass": 21,
                "crop": 321,
                "epochs": 80,
                "lr": 0.001,
                "lr_multi": 10.0,
                "crit": "ce",
                "conf": 0.95,
                "conf_line": 16,
                "iters": 1157,
                "bb_line": 20,
                "eval": "original",
            },
        ),
    )
    + _group(
        "unimatch",
        "cityscapes",
        [
            *_unimatch(
                "cityscapes",
                "configs/cityscapes.yaml",
                {
                    "nclass": 19,
                    "crop": 801,
                    "epochs": 240,
                    "lr": 0.005,
                    "lr_multi": 1.0,
                    "crit": "ohem",
                    "conf": 0.0,
                    "conf_line": 18,
                    "iters": 325,
                    "bb_line": 21,
                    "eval": "sliding_window",
                },
            ),
            ("OHEM thresh", 0.7, "configs/cityscapes.yaml:16", "ohem_thresh"),
            (
                "OHEM min_kept (per process, 2 images)",
                200000,
                "configs/cityscapes.yaml:17",
                "ohem_min_kept_per_image",
                100000,
                _EQ_PER_RANK + " (100000 x 2)",
            ),
        ],
    )
    + [
        _weights(
            "unimatch",
            ds,
            "resnet101.pth",
            "model/backbone/resnet.py:152 (`pretrained/resnet101.pth`)",
        )
        for ds in ("voc", "cityscapes")
    ]
)


def _cosa(ds: str, args: str, v: dict[str, Any]) -> list[tuple]:
    # Line numbers of args_coco.py; args.py lacks its `valfull` line 25, so later lines are -1.
    def at(n: int) -> str:
        return f"{args}:{n - 1 if ds == 'voc' and n > 25 else n}"

    return [
        ("lr", 6e-5, at(42), "lr"),
        ("wt_dec", 1e-2, at(44), "weight_decay"),
        (
            "batch_size per GPU x 2 (torchrun)",
            v["batch"],
            f"{args}:{v['batch_line']}, run_{ds}.sh:7",
            "batch_size",
        ),
        ("max_iters / 1000", v["epochs"], v["iters_src"], "nepochs"),
        ("iterations per epoch (ours)", 1000, v["iters_src"], "niters_per_epoch"),
        ("crop_size", 448, at(30), "image_height"),
        ("scales", (0.5, 2.0), at(31), "cosa_scales"),
        ("num_classes", v["nclass"], f"{args}:{v['nclass_line']}", "num_classes"),
        ("ignore_index", 255, at(32), "ignore_index"),
        ("seed", 0, at(18), "seed"),
        ("backbone", "vit_base_patch16_224", at(8), "cosa_backbone"),
        ("aux_layer", v["aux"], v["aux_src"], "cosa_aux_layer"),
        ("warmup_iters (loss)", v["warmup"], f"{args}:{v['warmup_line']}", "cosa_warmup_iters"),
        ("lr warm-up iterations", 1500, "main.py:67", "cosa_lr_warmup_iters"),
        ("lrscale", 10.0, "args.py:123", "cosa_lrscale"),
        ("min_mult", 0.0, at(43), "cosa_min_mult"),
        ("wt_dec_mult", 1.0, at(45), "cosa_wt_dec_mult"),
        ("momentum (EMA)", 0.9994, at(46), "cosa_momentum"),
        ("seg_weight", 0.1, at(47), "cosa_seg_weight"),
        ("segfg_alpha", 0.5, at(48), "cosa_segfg_alpha"),
        ("cam_weight", 0.05, at(49), "cosa_cam_weight"),
        ("seg_softmaxtemp", 0.01, at(52), "cosa_seg_softmaxtemp"),
        ("reg_weight", 0.05, at(53), "cosa_reg_weight"),
        ("pseudo_scales", (1.0, 0.5, 1.5), at(54), "cosa_pseudo_scales"),
        ("high_thre", v["high"], at(55), "cosa_high_thre"),
        ("high_thre_aux", 0.7, at(56), "cosa_high_thre_aux"),
        ("low_thre", 0.25, at(58), "cosa_low_thre"),
        ("low_thre_aux", 0.25, at(59), "cosa_low_thre_aux"),
        ("par_downscale", 2, at(67), "cosa_par_downscale"),
        ("aux_cam2seg", True, at(69), "cosa_aux_cam2seg"),
        ("aux_cam2seg_alpha", 0.5, at(71), "cosa_aux_cam2seg_alpha"),
        ("after_softmax", False, at(74), "cosa_after_softmax"),
        (
            "evaluation scales (official protocol)",
            (1.0, 0.5, 1.5, 0.75, 1.25),
            "evaluation_engine.py:85",
            "cosa_eval_scales",
        ),
        (
            "training list",
            v["train"],
            f"dataloaders/__init__.py:{v['train_line']}",
            "cosa_train_list",
        ),
        (
            "validation list (during training)",
            v["val"],
            f"dataloaders/__init__.py:{v['val_line']}",
            "cosa_train_eval_list",
        ),
    ]


COSA_ROWS = (
    _group(
        "cosa",
        "voc",
        _cosa(
            "voc",
            "args.py",
            {
                "batch": 4,
                "batch_line": 34,
                "epochs": 32,
                "iters_src": "run_voc.sh:10",
                "nclass": 21,
                "nclass_line": 32,
                "aux": -4,
                "aux_src": "run_voc.sh:11",
                "warmup": 6000,
                "warmup_line": 40,
                "high": 0.7,
                "train": "train_aug.txt",
                "train_line": 65,
                "val": "val.txt",
                "val_line": 15,
            },
        ),
    )
    + _group(
        "cosa",
        "coco",
        _cosa(
            "coco",
            "args_coco.py",
            {
                "batch": 8,
                "batch_line": 35,
                "epochs": 60,
                "iters_src": "args_coco.py:40",
                "nclass": 81,
                "nclass_line": 33,
                "aux": -3,
                "aux_src": "args_coco.py:12",
                "warmup": 10000,
                "warmup_line": 41,
                "high": 0.65,
                "train": "train.txt",
                "train_line": 78,
                "val": "val_part.txt",
                "val_line": 25,
            },
        ),
    )
    + [
        _weights(
            "cosa",
            ds,
            "jx_vit_base_p16_224-80ecf9dd.pth",
            "models/vit/vit.py:54 (the URL `pretrained=True`, args.py:10, downloads)",
        )
        for ds in ("voc", "coco")
    ]
)

ROWS: list[Row] = (
    _cpcl_family("sup", unsup=False)
    + _cpcl_family("cpcl", unsup=True)
    + CPS_ROWS
    + U2PL_ROWS
    + UNIMATCH_ROWS
    + COSA_ROWS
)
