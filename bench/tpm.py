"""A TPM 2.0 beside the HSM: quote sizes from the structure definitions, and a real quote.

When ``swtpm`` and ``tpm2-tools`` are installed, :func:`measure_tpm` starts a software TPM on
127.0.0.1 (socket interface, a temporary state directory), extends PCRs 0-7, makes an RSA-2048
and an ECC P-256 attestation key, and times ``tpm2_quote`` and ``tpm2_checkquote`` against
the start-up cost of the tools (``tpm2_getrandom 1`` for a tool that talks to the TPM,
``tpm2_print`` for one that does not), which is subtracted.  It also verifies the same quotes
in process with ``cryptography``, the fair comparison for the verifier's own per-attestation
check.  Without the tools, :func:`tpm_missing` says why and the bench prints one line.

Sizes (:func:`quote_sizes`) follow TPM 2.0 Library Part 2: a quote is a TPM2B_ATTEST holding a
TPMS_ATTEST with a TPMS_QUOTE_INFO, plus a TPMT_SIGNATURE.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "PCRS",
    "TOOLS",
    "measure_tpm",
    "parse_quote",
    "quote_sizes",
    "tpm_missing",
]

#: PCRs quoted: one per task of the 8-task attestation
PCRS = tuple(range(8))
#: the programs the TPM part needs
TOOLS = (
    "swtpm",
    "tpm2_quote",
    "tpm2_checkquote",
    "tpm2_getrandom",
    "tpm2_print",
    "tpm2_createprimary",
    "tpm2_create",
    "tpm2_load",
    "tpm2_evictcontrol",
    "tpm2_flushcontext",
    "tpm2_readpublic",
    "tpm2_pcrextend",
)
_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
_KEYS = {
    "rsa2048": ("rsa2048:rsassa-sha256:null", "0x81010002"),
    "ecc_p256": ("ecc256:ecdsa-sha256:null", "0x81010003"),
}
_PRIMARY = "0x81000001"

Progress = Callable[[str], None]


def quote_sizes(pcrs: int = len(PCRS), nonce: int = 32) -> dict[str, int]:
    """Bytes of a TPM 2.0 quote of ``pcrs`` SHA-256 PCRs, from the Part 2 structures.

    TPMS_ATTEST = magic u32 + type u16 + qualifiedSigner TPM2B_NAME (u16 + nameAlg u16 +
    32-byte digest) + extraData TPM2B_DATA (u16 + nonce) + TPMS_CLOCK_INFO (u64 clock, u32
    resetCount, u32 restartCount, u8 safe) + firmwareVersion u64 + TPMS_QUOTE_INFO
    (TPML_PCR_SELECTION: u32 count + hash u16 + sizeofSelect u8 + select bitmap, at least 3
    bytes on a PC-client TPM; pcrDigest TPM2B_DIGEST: u16 + 32).  TPMT_SIGNATURE = sigAlg u16 +
    hash u16 + the signature: RSASSA a TPM2B of 256 bytes, ECDSA two TPM2B of 32 bytes (r, s).
    """
    select = max(3, (pcrs + 7) // 8)
    selection = 4 + 2 + 1 + select
    attest = 4 + 2 + (2 + 2 + 32) + (2 + nonce) + (8 + 4 + 4 + 1) + 8 + selection + (2 + 32)
    sig_rsa = 2 + 2 + (2 + 256)
    sig_ecc = 2 + 2 + (2 + 32) + (2 + 32)
    return {
        "tpms_attest": attest,
        "signature_rsa2048": sig_rsa,
        "signature_ecc_p256": sig_ecc,
        "challenge": (2 + nonce) + selection,
        "quote_rsa2048": 2 + attest + sig_rsa,
        "quote_ecc_p256": 2 + attest + sig_ecc,
        "pcr_values": 32 * pcrs,
    }


def tpm_missing() -> str | None:
    """Why the TPM part cannot run here, or None when it can."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} not installed "
            f"(Debian: apt-get install swtpm swtpm-tools tpm2-tools)"
        )
    return None


def _free_ports() -> tuple[int, int]:
    """Two consecutive TCP ports free on 127.0.0.1: the TPM's command socket and, one above it,
    its control socket (the swtpm TCTI of tpm2-tools looks for control at port + 1)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port, port + 1
    raise RuntimeError("found no two consecutive free TCP ports on 127.0.0.1")


class _Swtpm:
    """A swtpm process of our own on 127.0.0.1 and the tpm2-tools environment to reach it."""

    def __init__(self, state: Path) -> None:
        self.port, ctrl = _free_ports()
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={state}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={self.port}"}
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    self.close()
                    raise RuntimeError(f"swtpm did not start: {err.strip()}") from None
                time.sleep(0.05)

    def run(self, *args: str, cwd: Path) -> float:
        """Run one tpm2-tools command; returns its wall time in seconds (raises if it fails)."""
        began = time.perf_counter()
        done = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, check=False)
        seconds = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.decode().strip()}")
        return seconds

    def cpu_seconds(self) -> float:
        """CPU time the TPM process has used so far (its own work: the quote's signature)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def _pcr_values() -> dict[int, bytes]:
    """What PCR i holds after one extend of a fresh TPM with sha256(b"task i")."""
    return {
        i: hashlib.sha256(bytes(32) + hashlib.sha256(f"task {i}".encode()).digest()).digest()
        for i in PCRS
    }


def parse_quote(attest: bytes) -> dict[str, Any]:
    """The fields of a marshalled TPMS_ATTEST of a quote that a verifier checks."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        part = attest[pos : pos + n]
        if len(part) != n:
            raise ValueError("truncated TPMS_ATTEST")
        pos += n
        return part

    def u(n: int) -> int:
        return int.from_bytes(take(n), "big")

    magic, kind = u(4), u(2)
    signer = take(u(2))
    extra = take(u(2))
    take(17 + 8)  # clockInfo, firmwareVersion
    selections = []
    for _ in range(u(4)):
        alg = u(2)
        selections.append((alg, take(u(1))))
    digest = take(u(2))
    if pos != len(attest):
        raise ValueError("trailing bytes after TPMS_ATTEST")
    return {
        "magic": magic,
        "type": kind,
        "signer": signer,
        "extra_data": extra,
        "selections": selections,
        "pcr_digest": digest,
    }


def _in_process_verifier(
    workdir: Path, key: str, nonce: bytes, pcrs: dict[int, bytes]
) -> Callable[[], bool]:
    """A quote check as a verifier would do it in process: signature with the AK's public key,
    magic and type, the nonce, and the PCR digest against the expected PCR values."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    public = serialization.load_pem_public_key((workdir / f"{key}.pem").read_bytes())
    attest = (workdir / f"{key}.msg").read_bytes()
    sig = (workdir / f"{key}.sig").read_bytes()
    expected_digest = hashlib.sha256(b"".join(pcrs[i] for i in PCRS)).digest()

    def check() -> bool:
        quote = parse_quote(attest)
        if quote["magic"] != 0xFF544347 or quote["type"] != 0x8018:
            return False
        if quote["extra_data"] != nonce or quote["pcr_digest"] != expected_digest:
            return False
        alg = int.from_bytes(sig[:2], "big")
        if alg == 0x0014:  # TPM_ALG_RSASSA
            assert isinstance(public, RSAPublicKey)
            size = int.from_bytes(sig[4:6], "big")
            public.verify(
                sig[6 : 6 + size],
                attest,
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        elif alg == 0x0018:  # TPM_ALG_ECDSA
            assert isinstance(public, ec.EllipticCurvePublicKey)
            rlen = int.from_bytes(sig[4:6], "big")
            r = int.from_bytes(sig[6 : 6 + rlen], "big")
            slen = int.from_bytes(sig[6 + rlen : 8 + rlen], "big")
            s = int.from_bytes(sig[8 + rlen : 8 + rlen + slen], "big")
            public.verify(
                utils.encode_dss_signature(r, s),
                attest,
                ec.ECDSA(hashes.SHA256()),
            )
        else:
            return False
        return True

    return check


def measure_tpm(progress: Progress, repeats: int = 25, in_process: int = 300) -> dict[str, Any]:
    """Section 3: time quotes and their verification on a software TPM (see the module doc)."""
    out: dict[str, Any] = {"repeats": repeats, "pcrs": len(PCRS)}
    version = subprocess.run(["swtpm", "--version"], capture_output=True, text=True, check=False)
    tools = subprocess.run(["tpm2_quote", "--version"], capture_output=True, text=True, check=False)
    out["swtpm"] = version.stdout.strip().splitlines()[0] if version.stdout else "?"
    out["tpm2_tools"] = tools.stdout.strip().splitlines()[0] if tools.stdout else "?"
    with tempfile.TemporaryDirectory(prefix="mchsm-bench-tpm-") as tmp:
        work = Path(tmp)
        state = work / "state"
        state.mkdir()
        tpm = _Swtpm(state)
        try:
            run = tpm.run
            run(
                "tpm2_createprimary",
                "-Q",
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc256",
                "-c",
                "primary.ctx",
                cwd=work,
            )
            run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", "primary.ctx", _PRIMARY, cwd=work)
            run("tpm2_flushcontext", "-t", cwd=work)
            for key, (alg, handle) in _KEYS.items():
                run(
                    "tpm2_create",
                    "-Q",
                    "-C",
                    _PRIMARY,
                    "-G",
                    alg,
                    "-a",
                    _ATTRS,
                    "-u",
                    f"{key}.pub",
                    "-r",
                    f"{key}.priv",
                    cwd=work,
                )
                run(
                    "tpm2_load",
                    "-Q",
                    "-C",
                    _PRIMARY,
                    "-u",
                    f"{key}.pub",
                    "-r",
                    f"{key}.priv",
                    "-c",
                    f"{key}.ctx",
                    cwd=work,
                )
                run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", f"{key}.ctx", handle, cwd=work)
                run("tpm2_flushcontext", "-t", cwd=work)
                run(
                    "tpm2_readpublic", "-Q", "-c", handle, "-f", "pem", "-o", f"{key}.pem", cwd=work
                )
            for i in PCRS:
                digest = hashlib.sha256(f"task {i}".encode()).hexdigest()
                run("tpm2_pcrextend", f"{i}:sha256={digest}", cwd=work)
            pcr_list = "sha256:" + ",".join(map(str, PCRS))
            nonce = hashlib.sha256(b"mchsm bench tpm nonce").digest()

            def quote(key: str) -> float:
                return run(
                    "tpm2_quote",
                    "-c",
                    _KEYS[key][1],
                    "-l",
                    pcr_list,
                    "-q",
                    nonce.hex(),
                    "-m",
                    f"{key}.msg",
                    "-s",
                    f"{key}.sig",
                    "-o",
                    f"{key}.pcrs",
                    "-g",
                    "sha256",
                    cwd=work,
                )

            def check(key: str) -> float:
                return run(
                    "tpm2_checkquote",
                    "-u",
                    f"{key}.pem",
                    "-m",
                    f"{key}.msg",
                    "-s",
                    f"{key}.sig",
                    "-f",
                    f"{key}.pcrs",
                    "-g",
                    "sha256",
                    "-q",
                    nonce.hex(),
                    cwd=work,
                )

            for key in _KEYS:  # warm-up, and the files the checks read
                quote(key)
                check(key)
            progress(
                f"    swtpm on 127.0.0.1:{tpm.port}, PCRs 0-7 extended, RSA-2048 and "
                f"ECC P-256 AKs; {repeats} repeats each"
            )
            # rounds of every command in turn, so that drift in a busy machine's speed hits
            # a command and the start-up it is compared with alike; net = per-round difference
            ops: dict[str, Callable[[], float]] = {
                "startup_tpm_tool": lambda: run("tpm2_getrandom", "1", cwd=work),
                "quote_rsa2048": lambda: quote("rsa2048"),
                "quote_ecc_p256": lambda: quote("ecc_p256"),
                "startup_offline_tool": lambda: run(
                    "tpm2_print", "-t", "TPMS_ATTEST", "rsa2048.msg", cwd=work
                ),
                "checkquote_rsa2048": lambda: check("rsa2048"),
                "checkquote_ecc_p256": lambda: check("ecc_p256"),
            }
            timings: dict[str, list[float]] = {name: [] for name in ops}
            ticks: dict[str, float] = dict.fromkeys(ops, 0.0)
            for _ in range(repeats):
                for name, fn in ops.items():
                    cpu = tpm.cpu_seconds()
                    timings[name].append(fn())
                    ticks[name] += tpm.cpu_seconds() - cpu
            out["median_seconds"] = {k: statistics.median(v) for k, v in timings.items()}
            out["tpm_process_cpu_seconds"] = {k: v / repeats for k, v in ticks.items()}
            net: dict[str, float] = {}
            spread: dict[str, tuple[float, float]] = {}
            for name in ops:
                if name.startswith("startup"):
                    continue
                base = "startup_tpm_tool" if name.startswith("quote") else "startup_offline_tool"
                diffs = sorted(a - b for a, b in zip(timings[name], timings[base], strict=True))
                net[name] = statistics.median(diffs)
                q = statistics.quantiles(diffs, n=4)
                spread[name] = (q[0], q[2])
            out["net_seconds"] = net
            out["net_quartiles_seconds"] = spread
            sizes: dict[str, int] = {}
            for key in _KEYS:
                sizes[f"tpms_attest_{key}"] = (work / f"{key}.msg").stat().st_size
                sizes[f"signature_{key}"] = (work / f"{key}.sig").stat().st_size
                sizes[f"pcrs_file_{key}"] = (work / f"{key}.pcrs").stat().st_size
            out["measured_sizes"] = sizes
            pcrs = _pcr_values()
            verify: dict[str, float] = {}
            for key in _KEYS:
                fn = _in_process_verifier(work, key, nonce, pcrs)
                if not fn():
                    raise RuntimeError(f"the {key} quote did not verify in process")
                cpu = time.process_time()
                for _ in range(in_process):
                    fn()
                verify[key] = (time.process_time() - cpu) / in_process
            out["in_process_verify_cpu_seconds"] = verify
        finally:
            tpm.close()
    return out
