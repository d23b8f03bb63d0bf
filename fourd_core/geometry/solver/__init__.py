"""Camera recovery from XYZ point maps (4DNeX Sec. 4.3, Eqs. 9-10), level by level.

Read in this order; each module only uses the ones above it:

=====================  =====================================================================
``rotation``           shared rotation helpers (exponential map, SO(3) projection, RQ, angles)
``data``               input checks, pixel sub-grids, per-frame normalisation, map noise
``robust``             noise scale from residuals, IRLS weights, robust losses
``model``              intrinsics models and the point-to-ray residual with its Jacobian
``init``               robust linear hypotheses (DLT, least median of squares, homography)
``refine``             Levenberg-Marquardt (Schur complement on the poses) inside IRLS
``checks``             option checks, the focal sanity check
``observability``      model-selection tests (BIC, score, Wald), standard errors, focal profile
``selection``          which focal model: one focal, a smooth zoom, or one per frame
``honesty``            when a fit is returned with low confidence, and when it raises
``outputs``            the per-pixel pass (depth, residual, confidence) and unprojection
``fit``                :func:`fit_cameras`, which chains the levels
=====================  =====================================================================
"""

from .fit import CameraFit, GeometryWarning, fit_cameras

__all__ = ["CameraFit", "GeometryWarning", "fit_cameras"]
