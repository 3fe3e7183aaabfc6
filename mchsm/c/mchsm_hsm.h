/* mchsm_hsm.h: a small C driver for the mchsm HSM, for firmware to start from.
 *
 * C99, no dynamic allocation, no libc (only <stdint.h> and <stddef.h>). It speaks the mailbox
 * protocol of docs/protocol.md section 9.3 - claim, LEN, CMD, DATA, poll STATUS, read RESULT
 * and CYCLES, release - exactly as the Python driver does (mchsm.sw.command), with the same
 * rules when the mailbox is lost: a command that lost it before its last data word was taken
 * changed nothing and is issued again; one that ran is never repeated.
 *
 * The driver never touches the bus itself. The integrator supplies two access functions,
 * mchsm_read32_fn and mchsm_write32_fn, that perform one 32-bit access at a byte offset of the
 * HSM's register window and report whether the HSM acknowledged it (MCHSM_BUS_ACK), refused it
 * with Wishbone err (MCHSM_BUS_REFUSED) or the bus failed (MCHSM_BUS_FAULT). Each access also
 * carries the handle's caller id. In a product the caller id is NOT chosen by software: the bus
 * fabric (the MMU or bus matrix the separation kernel programs) drives the HSM's caller input
 * from the task that owns the bus cycle, and the access functions ignore the argument. It is
 * there for the places where software legitimately names the caller: a testbench, a bench
 * bridge (docs/boards.md), or a kernel that issues commands on a task's behalf through a
 * fabric port it programs per access. docs/integrate.md, section "C driver", shows a port.
 *
 * Every register, field, command code, size and status code comes from mchsm_regs.h, which
 * `mchsm rtl export` generates from mchsm/constants.py together with the Verilog; this file and
 * mchsm_hsm.c are written beside it.
 */
#ifndef MCHSM_HSM_H
#define MCHSM_HSM_H

#include <stddef.h>
#include <stdint.h>

#include "mchsm_regs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What one bus access did. */
typedef enum {
    MCHSM_BUS_ACK = 0,     /* acknowledged (a read's value is valid) */
    MCHSM_BUS_REFUSED = 1, /* the HSM ended the cycle with err: refused, nothing changed */
    MCHSM_BUS_FAULT = 2    /* the bus or link failed (no answer, timeout): state unknown */
} mchsm_bus_t;

/* One 32-bit read at byte offset `offset` of the HSM's window, as `caller`. */
typedef mchsm_bus_t (*mchsm_read32_fn)(void *bus, uint32_t offset, uint8_t caller,
                                       uint32_t *value);
/* One 32-bit write of `value` at byte offset `offset`, as `caller`. */
typedef mchsm_bus_t (*mchsm_write32_fn)(void *bus, uint32_t offset, uint32_t value,
                                        uint8_t caller);

/* What a driver call returns. Only MCHSM_RC_OK means the command did what was asked. */
typedef enum {
    MCHSM_RC_OK = 0,        /* the command ran; the HSM answered MCHSM_OK */
    MCHSM_RC_STATUS = 1,    /* the command ended with another HSM status: h->status (MCHSM_ERR_*) */
    MCHSM_RC_BUSY = 2,      /* another caller held the mailbox for h->claim_limit attempts */
    MCHSM_RC_LOST = 3,      /* the manager took the mailbox before the command took its last data
                               word: it was aborted and changed nothing; it may be issued again
                               (mchsm_call already did, h->retries times) */
    MCHSM_RC_LOST_RAN = 4,  /* the manager took the mailbox after the command ran: it took effect
                               and only its result is lost; do not repeat it blindly */
    MCHSM_RC_BUS = 5,       /* an access function reported MCHSM_BUS_FAULT */
    MCHSM_RC_TIMEOUT = 6,   /* the command did not end within h->poll_limit STATUS reads (the
                               mailbox is still held; the next command aborts or waits for it) */
    MCHSM_RC_ARG = 7,       /* a bad argument (context, length, data beyond the declared length,
                               too little data: that command was aborted and changed nothing) */
    MCHSM_RC_NO_DEVICE = 8, /* probe: no mchsm HSM of this protocol version answers */
    MCHSM_RC_PROTOCOL = 9,  /* a result longer than the buffer given for it (not read beyond),
                               or, for a typed command, of another length than its own */
    MCHSM_RC_STATE = 10     /* a call out of order (mchsm_data without mchsm_begin ...) */
} mchsm_rc_t;

/* Defaults for the limits of a new handle (mchsm_init); change them in the handle. */
#define MCHSM_DEFAULT_CLAIM_LIMIT 100000u
#define MCHSM_DEFAULT_POLL_LIMIT 10000000u
#define MCHSM_DEFAULT_RETRIES 3u

/* One caller's handle. Set up with mchsm_init; one command at a time per handle. */
typedef struct {
    mchsm_read32_fn read32;
    mchsm_write32_fn write32;
    void *bus;           /* passed to the access functions (a base address, a link ...) */
    uint8_t caller;      /* passed to the access functions with every access */
    uint32_t claim_limit;
    uint32_t poll_limit;
    uint32_t retries;
    /* the last command that ended (MCHSM_RC_OK or MCHSM_RC_STATUS) */
    uint8_t status;      /* MCHSM_OK or an MCHSM_ERR_* code */
    uint32_t result_len; /* result bytes the HSM returned */
    uint32_t cycles;     /* HSM clock cycles it took (the CYCLES register) */
    /* private: the command being issued by mchsm_begin / mchsm_data / mchsm_end */
    uint32_t st_word;    /* STATUS after the CMD write */
    uint32_t st_left;    /* data bytes still to come */
    uint32_t st_carry;   /* bytes of a partial word, big-endian */
    uint8_t st_carried;  /* how many */
    uint8_t st_open;     /* a command was begun and not ended */
    uint8_t st_rc;       /* the first failure while sending its data (mchsm_rc_t) */
    uint8_t st_cmd;
} mchsm_t;

/* STATUS result. */
typedef struct {
    uint8_t provisioned;
    uint8_t contexts;
    uint8_t version;
    uint32_t counter; /* attestations so far */
    uint32_t ok;      /* contexts in their reference state, bit i-1 for context i; a task */
    uint32_t loaded;  /*   sees only its own bit in ok, loaded and anomaly */
    uint32_t anomaly;
    uint8_t dev_id[MCHSM_STATUS_RESULT_DEV_ID_SIZE];
} mchsm_status_t;

/* READ_CTX result. */
typedef struct {
    uint32_t flags; /* MCHSM_CTX_FLAG_* */
    uint32_t version;
    uint8_t measurement[MCHSM_READ_CTX_RESULT_MEASUREMENT_SIZE];
    uint8_t reference[MCHSM_READ_CTX_RESULT_REFERENCE_SIZE];
} mchsm_ctx_t;

/* ATTEST result: what goes back to the verifier. */
typedef struct {
    uint32_t sel;
    uint32_t ok;
    uint32_t ctr;
    uint8_t tag[MCHSM_ATTEST_RESULT_TAG_SIZE];
} mchsm_evidence_t;

/* The verifier's authorisation of an update (its context travels beside it). */
typedef struct {
    uint32_t old_version;
    uint32_t new_version;
    uint8_t reference[MCHSM_UPDATE_DATA_REFERENCE_SIZE];
    uint8_t tag[MCHSM_UPDATE_DATA_TAG_SIZE];
} mchsm_update_auth_t;

/* UPDATE result: the device's acknowledgement for the verifier. */
typedef struct {
    uint32_t new_version;
    uint8_t ack[MCHSM_UPDATE_RESULT_ACK_SIZE];
} mchsm_update_ack_t;

/* A handle for `caller` over the two access functions; default limits. */
void mchsm_init(mchsm_t *h, mchsm_read32_fn read32, mchsm_write32_fn write32, void *bus,
                uint8_t caller);

/* ID and INFO (anyone may read them): MCHSM_RC_NO_DEVICE unless an mchsm HSM of
 * MCHSM_PROTOCOL_VERSION answers; its number of contexts in *contexts (may be NULL). */
mchsm_rc_t mchsm_probe(mchsm_t *h, uint8_t *contexts);

/* Take the mailbox (CTRL = CLAIM), h->claim_limit attempts: MCHSM_RC_BUSY if another caller
 * holds it all along. Idempotent for the holder. */
mchsm_rc_t mchsm_claim(mchsm_t *h);

/* Give it back (CTRL = RELEASE; the HSM erases the result window): MCHSM_RC_LOST if we did not
 * hold it any more (the manager took it: nothing is lost). */
mchsm_rc_t mchsm_release(mchsm_t *h);

/* One command on a mailbox we hold: LEN, CMD, its `len` data bytes, wait, up to `cap` result
 * bytes into `result`, CYCLES. Returns MCHSM_RC_OK or MCHSM_RC_STATUS when it ended (h->status,
 * h->result_len, h->cycles), else why not. */
mchsm_rc_t mchsm_run(mchsm_t *h, uint8_t cmd, uint8_t ctx, const uint8_t *data, uint32_t len,
                     uint8_t *result, uint32_t cap);

/* mchsm_run in three steps, for data streamed from somewhere (an image in flash): mchsm_begin
 * declares `len` bytes and issues the command, mchsm_data sends any number of chunks of any
 * size adding up to `len`, mchsm_end waits and reads the result. A failure in mchsm_data is
 * also returned by mchsm_end. */
mchsm_rc_t mchsm_begin(mchsm_t *h, uint8_t cmd, uint8_t ctx, uint32_t len);
mchsm_rc_t mchsm_data(mchsm_t *h, const uint8_t *data, uint32_t n);
mchsm_rc_t mchsm_end(mchsm_t *h, uint8_t *result, uint32_t cap);

/* Claim, mchsm_run, release; a command that lost the mailbox before it ran is issued again
 * (h->retries times). What the typed helpers below use. */
mchsm_rc_t mchsm_call(mchsm_t *h, uint8_t cmd, uint8_t ctx, const uint8_t *data, uint32_t len,
                      uint8_t *result, uint32_t cap);

/* Typed commands (docs/protocol.md section 4); each claims and releases the mailbox. */
mchsm_rc_t mchsm_provision(mchsm_t *h, const uint8_t *dev_id, const uint8_t *root_key);
mchsm_rc_t mchsm_status(mchsm_t *h, mchsm_status_t *out);
mchsm_rc_t mchsm_read_ctx(mchsm_t *h, uint8_t ctx, mchsm_ctx_t *out);
mchsm_rc_t mchsm_reset(mchsm_t *h, uint8_t ctx);
/* MEASURE of an image in memory, any length; `digest` gets H(image) (MCHSM_DIGEST_SIZE). */
mchsm_rc_t mchsm_measure(mchsm_t *h, uint8_t ctx, const uint8_t *image, uint32_t len,
                         uint8_t *digest);
/* MEASURE streamed: mchsm_measure_begin, then mchsm_data with the image in chunks of any size,
 * then mchsm_measure_end (which releases the mailbox whatever happened). */
mchsm_rc_t mchsm_measure_begin(mchsm_t *h, uint8_t ctx, uint32_t len);
mchsm_rc_t mchsm_measure_end(mchsm_t *h, uint8_t *digest);
mchsm_rc_t mchsm_attest(mchsm_t *h, const uint8_t *nonce, uint32_t sel, mchsm_evidence_t *out);
mchsm_rc_t mchsm_update(mchsm_t *h, uint8_t ctx, const mchsm_update_auth_t *auth,
                        mchsm_update_ack_t *ack);
mchsm_rc_t mchsm_task_mac(mchsm_t *h, const uint8_t *data, uint32_t len, uint8_t *tag);
mchsm_rc_t mchsm_hash(mchsm_t *h, const uint8_t *data, uint32_t len, uint8_t *digest);
mchsm_rc_t mchsm_hmac_key(mchsm_t *h, const uint8_t *key, uint32_t len);
mchsm_rc_t mchsm_hmac(mchsm_t *h, const uint8_t *data, uint32_t len, uint8_t *tag);

/* The name of a return code ("OK", "LOST_RAN" ...), for logs. */
const char *mchsm_rc_name(mchsm_rc_t rc);

#ifdef __cplusplus
}
#endif

#endif /* MCHSM_HSM_H */
