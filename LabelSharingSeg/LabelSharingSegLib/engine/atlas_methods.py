"""The ways drawn atlas labels can be segmented on a scan (names shared by the engine, CLI and Slicer).

* ``register-deformable`` - carry the labels by affine + deformable registration (propagation.py);
* ``register-affine``     - carry them by affine registration only;
* ``lcs``                 - condition the bundle's LCS network on each label (Ma et al. 2022);
* ``lcs-refine``          - deformable propagation corrected by a refine network (bundles with an
                            ``lcs_refine`` network, networks.RefineLCSNet).

The default is the best measured on the demo's held-out brains (116 fine AAL labels drawn on the atlas, never
trained; 135 Neuromorphometrics labels) and on the real whole-head scan (docs/DEMO.md): for a bundle with a refine
network, ``lcs-refine`` (AAL 0.667 vs 0.654 for deformable propagation on its atlas, ahead on every test case;
real scan 0.667 vs 0.637; Neuromorphometrics 0.595 vs 0.587); for every other 3D bundle ``register-deformable``
(far above the paper's LCS: 0.636 vs 0.338). 2D bundles (no registration) keep ``lcs``.
Kept free of torch so command-line help stays fast.
"""

ATLAS_METHODS = ("register-deformable", "register-affine", "lcs", "lcs-refine")
DEFAULT_ATLAS_METHOD = "register-deformable"
REFINE_ATLAS_METHOD = "lcs-refine"


def default_atlas_method(arch: str, spatial_dims: int) -> str:
    """The default method for a bundle's network architecture and dimensionality."""
    if spatial_dims != 3:
        return "lcs"
    return REFINE_ATLAS_METHOD if arch == "lcs_refine" else DEFAULT_ATLAS_METHOD


ATLAS_METHOD_TITLES = {
    "register-deformable": "Deformable registration (affine + demons)",
    "register-affine": "Affine registration",
    "lcs": "LCS network (Ma et al. 2022)",
    "lcs-refine": "Deformable registration refined by the network",
}


def atlas_methods_for(arch: str, spatial_dims: int) -> tuple[str, ...]:
    """The methods a bundle can run (its network runs only the method made for it), its default first."""
    if spatial_dims != 3:
        return ("lcs",)
    network = REFINE_ATLAS_METHOD if arch == "lcs_refine" else "lcs"
    default = default_atlas_method(arch, spatial_dims)
    others = [m for m in ("register-deformable", "register-affine", network) if m != default]
    return (default, *others)
