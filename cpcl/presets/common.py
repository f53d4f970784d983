"""Keys shared by every preset, with the official CPCL values (exp_voc/config.py, exp_city/config.py).

`None` marks a value derived later by `cpcl.engine.resolve.finalize` unless the user sets it.
"""

import os

from easydict import EasyDict


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm or container limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def defaults() -> EasyDict:
    """Return the dataset-independent defaults as a fresh EasyDict."""
    C = EasyDict()
    # --- paths (None: derived from dataset_path / the experiment folder by `finalize`) ---
    C.dataset_path = None
    C.train_source = None
    C.unsup_source = None
    C.eval_source = None
    C.log_dir = "log"  # official: ./log next to train.py
    C.snapshot_dir = None  # official: <log_dir>/snapshot
    C.pretrained_model = None  # ImageNet file; set by the dataset presets (None: from scratch)

    # --- experiment ---
    C.seed = 12345
    C.labeled_ratio = 8
    C.nepochs = 34
    C.backbone = "resnet50"
    C.method = "cpcl"  # cpcl | cps | sup | u2pl
    C.device = "auto"  # auto (GPU when available) | cpu | cuda

    # --- CutMix box masks (official mask_gen.BoxMaskGenerator settings) ---
    C.cutmix_mask_prop_range = (0.25, 0.5)
    C.cutmix_boxmask_n_boxes = 3
    C.cutmix_boxmask_fixed_aspect_ratio = False
    C.cutmix_boxmask_by_size = False
    C.cutmix_boxmask_outside_bounds = False
    C.cutmix_boxmask_no_invert = False

    # --- images ---
    C.image_mean = (0.485, 0.456, 0.406)
    C.image_std = (0.229, 0.224, 0.225)
    C.label_policy = "error"  # error | ignore (map out-of-range label values to 255)
    C.class_names = None  # None: the dataset's official names; or a list of num_classes names

    # --- optimisation ---
    C.lr_power = 0.9
    C.momentum = 0.9
    C.weight_decay = 1e-4
    C.bn_eps = 1e-5
    C.bn_momentum = 0.1
    C.warm_up_epoch = 0
    C.train_scale_array = (0.5, 0.75, 1, 1.5, 1.75, 2.0)
    # Official 4, but never more than the CPUs we may use (PyTorch warns above that).
    C.num_workers = min(4, usable_cpus())
    C.num_train_imgs = None
    C.num_unsup_imgs = None
    C.max_samples = None
    C.niters_per_epoch = None

    # --- speed (defaults keep the official fp32 numerics) ---
    C.amp = "none"  # none | bf16 | fp16
    C.channels_last = False
    C.compile = False
    C.cuda_graphs = False  # EXPERIMENTAL (cpcl.engine.graphs, docs/gpu.md)
    C.fused_teacher = False  # non-faithful opt-in: u0 and u1 in one teacher forward
    C.cudnn_benchmark = True

    # --- evaluation ---
    C.eval_iter = 30
    C.eval_stride_rate = 2 / 3
    C.eval_scale_array = (1.0,)
    C.eval_flip = False
    C.eval_crop_size = None  # None: the training crop (official)
    C.eval_branch = "1"  # 1 (official) | 2 | avg
    C.eval_every = 0  # evaluate every K epochs during training (0: off, official)
    C.eval_window_batch = 0  # network inputs per forward; 0: sized to the device (auto)
    # eval.py / evaluate_snapshot: cpcl (this evaluator, CPCL's official protocol) | official
    # (the method's own protocol, `Method.official_evaluator`: U2PL's, UniMatch's).
    C.eval_protocol = "cpcl"

    # --- snapshots and display ---
    C.snapshot_iter = 2
    # True: numbered snapshots epoch-N.pth hold the weights only (about 1/2 the size);
    # epoch-last.pth and interrupted.pth stay complete for resuming.
    C.snapshot_weights_only = False
    C.record_info_iter = 20
    C.display_iter = 50
    return C
