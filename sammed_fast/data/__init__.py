"""Prostate data: the six-site reader, slice datasets, and (``.synthetic``) the synthetic set.

``load_domain(root, "A")`` reads one domain of the common release (or of the synthetic set, which
has the same layout); ``split_source`` gives the source domain's train/val/test split;
``SliceDataset`` serves 2D slices at the tile size and ``VolumeAssembler`` rebuilds per-volume
predictions from slice predictions. Array axes: see ``sammed_fast.data.prostate``.
"""
from sammed_fast.data.prostate import (
    DOMAINS, CaseFiles, Domain, Volume, domain_letter, find_cases, load_domain,
    normalise_intensity, read_case, save_like, split_source, to_nifti_order,
)
from sammed_fast.data.slices import SliceDataset, VolumeAssembler, resize_images, resize_labels

__all__ = [
    "DOMAINS", "CaseFiles", "Domain", "Volume", "domain_letter", "find_cases", "load_domain",
    "normalise_intensity", "read_case", "save_like", "split_source", "to_nifti_order",
    "SliceDataset", "VolumeAssembler", "resize_images", "resize_labels",
]
