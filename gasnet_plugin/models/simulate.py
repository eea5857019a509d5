"""``gasnet simulate``: labelled mock spectra drawn from an eigenspectra model.

A mock of class ``c`` at redshift ``z`` is built the way the model explains a real
spectrum, on the model's observed grid (``N`` pixels):

* a *source* real spectrum of that class (or of any class, when labels are missing) gives
  the continuum (GaSNet-III's polynomial), the normalisation and, through the class's
  encoder, coefficients, which are perturbed (multiplicatively, ``coef_scatter`` in ln);
* the class's eigenspectra at the lag of ``z`` (drawn uniformly in ln(1 + z) within the
  class's range, or within ``z_range``), interpolated between whole lags, times those
  coefficients, are the signal: ``flux = continuum + norm · coef @ E(z)``;
* a *donor* real spectrum (any survey) gives its inverse-variance and mask pattern,
  rescaled so that the mock has the donor's median S/N times ``snr_scale``; the noise is
  Gaussian with that ivar; masked and ivar-0 pixels get ivar 0;
* optionally (``anomaly_fraction``) an anomaly: an unmodelled emission line (a Gaussian of
  3–10 pixels, 5–30 σ) or a second object (another class at another z) superposed.

The truth (class, z, S/N, anomaly, source and donor rows) goes into the labels of the
written files, which the ``table`` reader reads back (``CLASS``, ``Z`` → ``SURVEY_*``).
Generation runs in chunks, vectorised over the chunk (no loop per spectrum).
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits

from gasnet_plugin.engines.eigen_preprocess import preprocess
from gasnet_plugin.engines.eigen_scan import encode_coefficients
from gasnet_plugin.models.eigen_model import EigenModel, build_encoder

ANOMALIES = ("line", "superposed")


@dataclass
class ReferenceSet:
    """Real spectra on the model's grid, preprocessed: what mocks borrow from.

    Attributes
    ----------
    flux, ivar
        ``(R, N)`` float32.
    mask
        ``(R, N)`` bool, True where the pixel has no data.
    spectype
        ``(R,)`` class labels (``""`` where unknown).
    continuum, norm
        GaSNet-III's continuum ``(R, N)`` and RMS ``(R, 1)``.
    coefficients
        Class → ``(R, K)`` encoder coefficients of every reference spectrum.
    snr
        ``(R,)`` median S/N per valid pixel.
    """

    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    spectype: np.ndarray
    continuum: np.ndarray
    norm: np.ndarray
    coefficients: dict[str, np.ndarray]
    snr: np.ndarray


def reference_set(model: EigenModel, flux: np.ndarray, ivar: np.ndarray,
                  spectype: np.ndarray) -> ReferenceSet:
    """Preprocess real spectra (on the model's grid) and encode them with every class."""
    good = (ivar > 0).sum(axis=1) > 0.3 * ivar.shape[1]
    flux, ivar, spectype = flux[good], ivar[good], np.asarray(spectype)[good]
    with torch.no_grad():
        pre = preprocess(torch.from_numpy(np.ascontiguousarray(flux, np.float32)),
                         torch.from_numpy(np.ascontiguousarray(ivar, np.float32)),
                         torch.from_numpy(model.obs_loglam), model.preprocessing["poly_deg"])
        ok = pre.ok.numpy()
        coefficients = {t.name: encode_coefficients(build_encoder(t), t.n_eigen,
                                                    pre.fluctuation).numpy()[ok]
                        for t in model.templates}
    with np.errstate(invalid="ignore"):
        snr = np.nanmedian(np.where(ivar > 0, np.abs(flux) * np.sqrt(ivar), np.nan), axis=1)
    return ReferenceSet(flux=flux[ok], ivar=ivar[ok], mask=ivar[ok] <= 0, spectype=spectype[ok],
                        continuum=pre.continuum.numpy()[ok], norm=pre.norm.numpy()[ok],
                        coefficients=coefficients, snr=snr[ok])


def _signal(model: EigenModel, name: str, coef: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``coef @ E`` of class ``name`` at redshifts ``z`` on the observed grid, ``(n, N)``;
    the fractional lag interpolates linearly between whole lags."""
    template = model.template(name)
    rest = template.rest_loglam
    step = (rest[-1] - rest[0]) / (rest.size - 1)
    n_obs = model.obs_loglam.size
    lag = (model.obs_loglam[0] - np.log10(1 + z) - rest[0]) / step
    lag = np.clip(lag, 0, rest.size - n_obs - 1.0)
    whole = np.floor(lag).astype(np.int64)
    frac = (lag - whole)[:, None].astype(np.float32)
    eig = torch.from_numpy(template.eigenvectors)
    windows = eig.unfold(1, n_obs, 1)                                 # (K, S, N)
    low = windows[:, torch.from_numpy(whole)].permute(1, 0, 2)        # (n, K, N)
    high = windows[:, torch.from_numpy(whole + 1)].permute(1, 0, 2)
    c = torch.from_numpy(coef.astype(np.float32))[:, None, :]
    return ((1 - torch.from_numpy(frac)) * (c @ low)[:, 0]
            + torch.from_numpy(frac) * (c @ high)[:, 0]).numpy()


def draw_mocks(model: EigenModel, reference: ReferenceSet, n: int, rng: np.random.Generator,
               classes: list[str] | None = None, z_range: tuple[float, float] | None = None,
               coef_scatter: float = 0.2, snr_scale: float = 1.0,
               anomaly_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """``n`` mocks (see the module docstring) as arrays: ``flux``, ``ivar``, ``mask``
    ``(n, N)`` and the truth ``CLASS``, ``Z``, ``SNR``, ``ANOMALY``, ``SOURCE_ROW``,
    ``DONOR_ROW`` ``(n,)``."""
    classes = classes or model.classes
    n_ref, n_obs = reference.flux.shape
    spectype = rng.choice(np.array(classes), size=n)
    z = np.empty(n)
    source = np.empty(n, dtype=np.int64)
    flux = np.empty((n, n_obs), dtype=np.float32)
    for name in classes:
        pick = np.flatnonzero(spectype == name)
        if pick.size == 0:
            continue
        template = model.template(name)
        low, high = z_range or (template.z_min, template.z_max)
        low, high = max(low, template.z_min), min(high, template.z_max)
        z[pick] = np.expm1(rng.uniform(math.log1p(low), math.log1p(high), pick.size))
        own = np.flatnonzero(reference.spectype == name)
        pool = own if own.size else np.arange(n_ref)
        source[pick] = rng.choice(pool, size=pick.size)
        coef = reference.coefficients[name][source[pick]] \
            * np.exp(rng.normal(0.0, coef_scatter, (pick.size, template.n_eigen)))
        flux[pick] = reference.continuum[source[pick]] \
            + reference.norm[source[pick]] * _signal(model, name, coef, z[pick])

    donor = rng.integers(0, n_ref, n)
    mask = reference.mask[donor].copy()
    ivar = reference.ivar[donor].astype(np.float32).copy()
    # rescale the donor's noise so the mock has the donor's median S/N (× snr_scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        level = np.nanmedian(np.where(mask, np.nan, np.abs(flux) * np.sqrt(ivar)), axis=1)
        scale = np.where(level > 0, reference.snr[donor] * snr_scale / level, 1.0)
    ivar *= (scale**2)[:, None].astype(np.float32)
    ivar[mask] = 0.0

    anomaly = np.full(n, "", dtype="<U10")
    if anomaly_fraction > 0:
        hit = np.flatnonzero(rng.random(n) < anomaly_fraction)
        kinds = rng.choice(np.array(ANOMALIES), size=hit.size)
        anomaly[hit] = kinds
        lines = hit[kinds == "line"]
        if lines.size:
            centre = rng.uniform(50, n_obs - 50, lines.size)[:, None]
            width = rng.uniform(1.5, 5.0, lines.size)[:, None]
            sigma = np.sqrt(1.0 / np.maximum(np.median(ivar[lines], axis=1), 1e-30))[:, None]
            height = rng.uniform(5, 30, lines.size)[:, None] * sigma
            pixels = np.arange(n_obs)[None, :]
            flux[lines] += (height * np.exp(-0.5 * ((pixels - centre) / width) ** 2)) \
                .astype(np.float32)
        pairs = hit[kinds == "superposed"]
        if pairs.size:
            other = rng.permutation(pairs)
            flux[pairs] += rng.uniform(0.3, 1.0, (pairs.size, 1)).astype(np.float32) \
                * (flux[other] - reference.continuum[source[other]])
    noise = rng.standard_normal((n, n_obs)).astype(np.float32)
    with np.errstate(divide="ignore"):
        sigma = np.where(ivar > 0, 1.0 / np.sqrt(ivar), 0.0).astype(np.float32)
    flux = flux + noise * sigma
    with np.errstate(invalid="ignore"):
        snr = np.nanmedian(np.where(ivar > 0, np.abs(flux) * np.sqrt(ivar), np.nan), axis=1)
    return {"flux": flux, "ivar": ivar, "mask": mask, "CLASS": spectype, "Z": z, "SNR": snr,
            "ANOMALY": anomaly, "SOURCE_ROW": source, "DONOR_ROW": donor}


def write_mocks(mocks: dict[str, np.ndarray], loglam: np.ndarray, path: str | os.PathLike[str],
                meta: dict[str, str] | None = None) -> Path:
    """Write mocks as a tabular FITS file the ``table`` reader accepts (``flux``, ``ivar``,
    ``mask`` vectors; truth columns; ``input_grid`` in HDU 2)."""
    path = Path(path)
    _n, n_obs = mocks["flux"].shape
    columns = [
        fits.Column(name="flux", format=f"{n_obs}E", array=mocks["flux"]),
        fits.Column(name="ivar", format=f"{n_obs}E", array=mocks["ivar"]),
        fits.Column(name="mask", format=f"{n_obs}B", array=mocks["mask"].astype(np.uint8)),
        fits.Column(name="CLASS", format="6A", array=mocks["CLASS"]),
        fits.Column(name="Z", format="D", array=mocks["Z"]),
        fits.Column(name="SNR", format="E", array=mocks["SNR"]),
        fits.Column(name="ANOMALY", format="10A", array=mocks["ANOMALY"]),
        fits.Column(name="SOURCE_ROW", format="K", array=mocks["SOURCE_ROW"]),
        fits.Column(name="DONOR_ROW", format="K", array=mocks["DONOR_ROW"]),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="MOCKS")
    table.header["SURVEY"] = "MOCK"
    primary = fits.PrimaryHDU()
    primary.header["SURVEY"] = "MOCK"
    primary.header["CREATED"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for key, value in (meta or {}).items():
        primary.header[key[:8].upper()] = str(value)[:68]
    grid = fits.BinTableHDU.from_columns(
        [fits.Column(name="input_grid", format=f"{n_obs}D", array=loglam[None, :])], name="GRID")
    fits.HDUList([primary, table, grid]).writeto(path, overwrite=True)
    return path
