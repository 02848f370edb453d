# Inside the full Rubin stack, on a repository whose images are afw ExposureF datasets:
# read the science image (and the difference image) through RBNetMaskedImage, which
# converts an afw Exposure (pixels, mask, variance) without the exposure record that
# VisitImage/DifferenceImage conversion needs. The template already defaults to it.
config.scienceStorageClass = "RBNetMaskedImage"  # noqa: F821
config.differenceStorageClass = "RBNetMaskedImage"  # noqa: F821
