# DMTN-216 "basic" classifier: the model reads the difference image only. The
# reliability task then does not read the science and template images at all.
# Apply with -C computeReliability:config/difference_only.py (or -C trainTriplet:...).
config.channels = ["difference"]  # noqa: F821
