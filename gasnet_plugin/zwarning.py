"""The ZWARN bitmask: one bit per reason not to trust a row of the results table.

``ZWARN == 0`` means "trust it". Every set bit has a human-readable reason in the
``ZWARN_REASON`` column (reasons of several bits are joined with ``"; "``). The bits are
defined here once; the table below is the documentation (Redrock's ``zwarning`` is the model).

===  ==================  =============================================================
bit  name                meaning
===  ==================  =============================================================
0    BAD_INPUT           the file or the spectrum could not be used at all: unreadable
                         file, malformed arrays, no uncertainty, wavelengths not strictly
                         increasing, a spectral axis that is not a wavelength
1    NODATA              nothing to measure: no valid pixel on the common grid (all
                         masked, zero inverse variance, no overlap with the grid, values
                         beyond float32), or no signal left after the continuum (a flat
                         spectrum) or a non-finite χ²
2    BAD_PIXELS          some input pixels had non-finite flux or inverse variance, or a
                         negative inverse variance; they were masked and the rest used
3    STAGE_FAILED        a stage raised an error on this spectrum; its reason is recorded
                         and the spectrum gets no further results
4    SMALL_DELTA_CHI2    the best redshift solution beats the best one more than
                         1000 km/s away by less than the threshold (Δχ² < 9 by default):
                         the redshift is ambiguous
5    Z_AT_EDGE           the best redshift lies on the edge of its class's z range: the
                         true redshift may be outside it
6    BAD_FIT             the χ² minimum could not be refined (no positive curvature, or
                         a singular coefficient fit): Z is on the pixel grid, ZERR is NaN
7    LITTLE_DATA         fewer valid pixels than the engine needs for a trustworthy fit
                         (continuum polynomial + K eigenspectra, times a margin)
8    LOW_SNR             median S/N per pixel below the calibrated threshold
                         (flag-anomaly)
9    LARGE_CHI2          the best fit's reduced χ² is an outlier for its class and S/N:
                         SCORE_CHI2 (robust z-score against the calibration set's
                         spectra of that class and S/N) above the threshold (flag-anomaly)
10   DEGENERATE          GaSNet-III's R between the two best χ² minima is small:
                         SCORE_DEGENERATE = −log10 R above the threshold (flag-anomaly)
11   CLASS_DISAGREE      the classifier's most probable class is not the scan's SPECTYPE
                         (flag-anomaly)
12   Z_DISAGREE          the classifier stage's CNN_Z and the scan's Z differ beyond their
                         errors: SCORE_ZDIFF = abs(Z − CNN_Z) / √(ZERR² + CNN_ZERR²) above the
                         threshold (flag-anomaly)
13   LOW_PROB            the classifier's top probability CNN_PROB is below the threshold
                         (flag-anomaly)
14   CLASS_UNCERTAIN     the class decision is close: the decided class's posterior
                         probability (PROB_<SPECTYPE>) is below the decision's
                         min_probability (redshift-scan)
15   MISSING_TEMPLATE    the engine had no template for a class the run expects (redrock
                         with an incomplete template set): the answer can never be that
                         class
===  ==================  =============================================================

Rows with a *fatal* bit (:data:`FATAL`) carry no measurement; the other bits are warnings.
"""

from __future__ import annotations

import enum


class ZWarn(enum.IntFlag):
    """Bits of the ``ZWARN`` column (see the module docstring for their meaning)."""

    BAD_INPUT = 1 << 0
    NODATA = 1 << 1
    BAD_PIXELS = 1 << 2
    STAGE_FAILED = 1 << 3
    SMALL_DELTA_CHI2 = 1 << 4
    Z_AT_EDGE = 1 << 5
    BAD_FIT = 1 << 6
    LITTLE_DATA = 1 << 7
    LOW_SNR = 1 << 8
    LARGE_CHI2 = 1 << 9
    DEGENERATE = 1 << 10
    CLASS_DISAGREE = 1 << 11
    Z_DISAGREE = 1 << 12
    LOW_PROB = 1 << 13
    CLASS_UNCERTAIN = 1 << 14
    MISSING_TEMPLATE = 1 << 15


FATAL = ZWarn.BAD_INPUT | ZWarn.NODATA | ZWarn.STAGE_FAILED
"""Bits after which a row carries no measurement."""


def describe(zwarn: int) -> list[str]:
    """Names of the bits set in ``zwarn``, lowest bit first."""
    return [bit.name for bit in ZWarn if zwarn & bit]
