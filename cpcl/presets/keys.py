"""One line of meaning for every config key: the single source of `train.py --help`.

A method's own keys (`Method.config_keys`) are described by its `Method.config_help`. A test
checks that every key of every resolved config has a line here or there, so the help cannot
fall behind the presets.
"""

KEY_HELP: dict[str, str] = {
    # --- paths ---
    "dataset_path": "dataset root (default: DATA/pascal_voc, DATA/city or DATA/coco of the repository)",
    "train_source": "labeled split list (default: from dataset_path and labeled_ratio)",
    "unsup_source": "unlabeled split list (default: from dataset_path and labeled_ratio)",
    "eval_source": "validation split list (default: <dataset_path>/val.txt)",
    "log_dir": "folder of the text log, config.json, run_info.txt, TensorBoard (tb/)",
    "snapshot_dir": "folder of the snapshots epoch-N.pth / epoch-last.pth (default <log_dir>/snapshot)",
    "pretrained_model": "ImageNet backbone file (resnet50_v1c.pth layout), or None: from scratch",
    # --- experiment ---
    "seed": "random seed (sampling, augmentation, initialisation)",
    "labeled_ratio": "1/N of the training images are labeled: picks the split lists",
    "nepochs": "number of training epochs",
    "backbone": "ResNet depth of the DeepLabv3+ encoder",
    "method": "training method (cpcl official; cps, sup baselines; see cpcl/methods)",
    "device": "auto (GPU 0 when available), cpu or cuda",
    "dataset_name": "dataset of the preset: voc, cityscapes, coco (CoSA, 2014), ade20k or coco2017 (UniMatch V2) (layout, class names, colours)",
    "num_classes": "number of classes, background included",
    "background": "class index of the background (official key; informational)",
    "ignore_index": "label value excluded from losses and metrics",
    "num_train_total": "images in the full training list (official count; sizes the epoch)",
    "num_eval_imgs": "images in the validation list (official count; informational)",
    # --- CutMix ---
    "cutmix_mask_prop_range": "CutMix box size range (fraction of the area, of the sides with by_size)",
    "cutmix_boxmask_n_boxes": "CutMix boxes per mask",
    "cutmix_boxmask_fixed_aspect_ratio": "CutMix boxes keep the image's aspect ratio",
    "cutmix_boxmask_by_size": "CutMix box sides drawn directly instead of from an area",
    "cutmix_boxmask_outside_bounds": "CutMix boxes may extend past the image border",
    "cutmix_boxmask_no_invert": "CutMix box mask not inverted (official: inverted)",
    # --- images ---
    "image_height": "training crop height in pixels",
    "image_width": "training crop width in pixels",
    "image_mean": "per-channel mean (RGB, 0-1) for normalisation",
    "image_std": "per-channel standard deviation (RGB, 0-1) for normalisation",
    "label_policy": "label values outside the classes: error, or ignore (mapped to 255)",
    "class_names": "class names for tables and logs, or None: the dataset's official names",
    "train_scale_array": "random rescale factors of training images",
    # --- optimisation ---
    "lr": "base learning rate (poly schedule)",
    "lr_power": "exponent of the poly learning-rate schedule",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "bn_eps": "BatchNorm epsilon",
    "bn_momentum": "BatchNorm running-statistics momentum",
    "warm_up_epoch": "epochs of linear learning-rate warm-up (0: none, official)",
    "batch_size": "global batch size (split evenly over torchrun processes)",
    "unsup_weight": "weight of the unsupervised loss (lambda)",
    "sup_loss": "supervised loss: ce (cross-entropy) or ohem (online hard example mining)",
    "ohem_thresh": "OHEM: probability below which a pixel counts as hard",
    "ohem_min_kept_per_image": "OHEM: pixels kept at least per image",
    "num_workers": "data-loading worker processes (default: at most 4 and the usable CPUs)",
    "num_train_imgs": "labeled images (default: the size of the labeled split list)",
    "num_unsup_imgs": "unlabeled images (default: the size of the unlabeled split list)",
    "max_samples": "samples per stream and epoch (default: the larger split)",
    "niters_per_epoch": "iterations per epoch (default: max_samples // batch_size)",
    # --- speed ---
    "amp": "autocast: none (fp32, faithful), bf16 or fp16",
    "channels_last": "NHWC memory format (default per method: on for UniMatch, where it pays)",
    "compile": "torch.compile the network",
    "cuda_graphs": "EXPERIMENTAL: capture forwards + losses + backward as one CUDA graph (docs/gpu.md)",
    "fused_teacher": "NOT faithful: both unlabeled images through each teacher in one forward",
    "cudnn_benchmark": "let cuDNN pick the fastest convolution algorithms",
    # --- evaluation ---
    "eval_iter": "official evaluation interval key (kept for compatibility)",
    "eval_stride_rate": "sliding-window stride as a fraction of the crop",
    "eval_scale_array": "evaluation scales (multi-scale testing)",
    "eval_flip": "add horizontally flipped predictions",
    "eval_crop_size": "sliding-window size (default: the training crop)",
    "eval_branch": "network evaluated: 1 (official), 2 or avg",
    "eval_every": "evaluate on the validation split every K epochs (0: off, official)",
    "eval_window_batch": "sliding windows per network call",
    "eval_protocol": "eval.py: cpcl (the project's evaluator, default) | official (the method's own: u2pl, unimatch)",
    # --- snapshots and display ---
    "snapshot_iter": "a numbered snapshot every K epochs after the first sixth (and the last)",
    "snapshot_weights_only": "numbered snapshots hold weights only (epoch-last.pth stays complete)",
    "record_info_iter": "official logging interval key (kept for compatibility)",
    "display_iter": "iterations between progress-bar and TensorBoard updates",
}
