/* mchsm_hsm.c: the mchsm HSM driver (see mchsm_hsm.h). C99, no allocation, no libc.
 *
 * The steps and the lost-mailbox rules follow mchsm.sw.command, the Python driver's
 * protocol, line for line; the test suite runs this file against the RTL under Verilator and
 * compares every result with the Python driver's (mchsm.sim.cdriver).
 */
#include "mchsm_hsm.h"

#define BYTE_BITS 8u              /* a property of C's uint8_t, not of the HSM */
#define WORD_BYTES MCHSM_U32_SIZE /* DATA and RESULT words */
/* a field of a register or result word: FIELD(info, MCHSM_INFO_CONTEXTS) */
#define FIELD(word, name) (((word) & name##_MASK) >> name##_SHIFT)

/* -- bytes and words (big-endian, like DATA and RESULT) -------------------------------------- */

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0u;
    uint32_t i;

    for (i = 0u; i < WORD_BYTES; i++)
        v = (v << BYTE_BITS) | p[i];
    return v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    uint32_t i;

    for (i = WORD_BYTES; i-- > 0u;) {
        p[i] = (uint8_t)v;
        v >>= BYTE_BITS;
    }
}

static void copy(uint8_t *dst, const uint8_t *src, uint32_t n)
{
    uint32_t i;

    for (i = 0u; i < n; i++)
        dst[i] = src[i];
}

/* -- one access ------------------------------------------------------------------------------ */

/* A write: MCHSM_RC_OK if acknowledged, `refused` if refused, MCHSM_RC_BUS on a fault. */
static mchsm_rc_t wr(mchsm_t *h, uint32_t offset, uint32_t value, mchsm_rc_t refused)
{
    mchsm_bus_t b = h->write32(h->bus, offset, value, h->caller);

    if (b == MCHSM_BUS_ACK)
        return MCHSM_RC_OK;
    return b == MCHSM_BUS_REFUSED ? refused : MCHSM_RC_BUS;
}

/* A read of the holder's own registers: a refusal means the mailbox is not ours any more. */
static mchsm_rc_t rd(mchsm_t *h, uint32_t offset, uint32_t *value, mchsm_rc_t refused)
{
    mchsm_bus_t b = h->read32(h->bus, offset, h->caller, value);

    if (b == MCHSM_BUS_ACK)
        return MCHSM_RC_OK;
    return b == MCHSM_BUS_REFUSED ? refused : MCHSM_RC_BUS;
}

/* STATUS as we read it; lost (`ran` says whether the command took effect) unless it is ours. */
static mchsm_rc_t read_status(mchsm_t *h, int ran, uint32_t *word)
{
    mchsm_bus_t b = h->read32(h->bus, MCHSM_REG_STATUS, h->caller, word);

    if (b == MCHSM_BUS_FAULT)
        return MCHSM_RC_BUS;
    if (b != MCHSM_BUS_ACK)
        *word = 0u;
    if (!(*word & MCHSM_STATUS_MINE_MASK))
        return ran ? MCHSM_RC_LOST_RAN : MCHSM_RC_LOST;
    return MCHSM_RC_OK;
}

/* Poll STATUS (starting from *word) until the command is no longer busy. */
static mchsm_rc_t wait_done(mchsm_t *h, int ran, uint32_t *word)
{
    uint32_t i;
    mchsm_rc_t rc;

    for (i = 0u; i < h->poll_limit; i++) {
        if (!(*word & MCHSM_STATUS_BUSY_MASK))
            return MCHSM_RC_OK;
        rc = read_status(h, ran, word);
        if (rc != MCHSM_RC_OK)
            return rc;
    }
    return MCHSM_RC_TIMEOUT;
}

/* -- the mailbox ----------------------------------------------------------------------------- */

void mchsm_init(mchsm_t *h, mchsm_read32_fn read32, mchsm_write32_fn write32, void *bus,
                uint8_t caller)
{
    h->read32 = read32;
    h->write32 = write32;
    h->bus = bus;
    h->caller = caller;
    h->claim_limit = MCHSM_DEFAULT_CLAIM_LIMIT;
    h->poll_limit = MCHSM_DEFAULT_POLL_LIMIT;
    h->retries = MCHSM_DEFAULT_RETRIES;
    h->status = MCHSM_OK;
    h->result_len = 0u;
    h->cycles = 0u;
    h->st_word = 0u;
    h->st_left = 0u;
    h->st_carry = 0u;
    h->st_carried = 0u;
    h->st_open = 0u;
    h->st_rc = MCHSM_RC_OK;
    h->st_cmd = 0u;
}

mchsm_rc_t mchsm_probe(mchsm_t *h, uint8_t *contexts)
{
    uint32_t id, info;
    mchsm_rc_t rc;

    rc = rd(h, MCHSM_REG_ID, &id, MCHSM_RC_NO_DEVICE);
    if (rc != MCHSM_RC_OK)
        return rc;
    if (id != MCHSM_MAGIC)
        return MCHSM_RC_NO_DEVICE;
    rc = rd(h, MCHSM_REG_INFO, &info, MCHSM_RC_NO_DEVICE);
    if (rc != MCHSM_RC_OK)
        return rc;
    if (FIELD(info, MCHSM_INFO_VERSION) != MCHSM_PROTOCOL_VERSION)
        return MCHSM_RC_NO_DEVICE;
    if (contexts)
        *contexts = (uint8_t)FIELD(info, MCHSM_INFO_CONTEXTS);
    return MCHSM_RC_OK;
}

mchsm_rc_t mchsm_claim(mchsm_t *h)
{
    uint32_t i;
    mchsm_bus_t b;

    for (i = 0u; i < h->claim_limit; i++) {
        b = h->write32(h->bus, MCHSM_REG_CTRL, MCHSM_CTRL_CLAIM, h->caller);
        if (b == MCHSM_BUS_ACK)
            return MCHSM_RC_OK;
        if (b == MCHSM_BUS_FAULT)
            return MCHSM_RC_BUS;
    }
    return MCHSM_RC_BUSY;
}

mchsm_rc_t mchsm_release(mchsm_t *h)
{
    if (h->st_open)
        return MCHSM_RC_STATE;
    return wr(h, MCHSM_REG_CTRL, MCHSM_CTRL_RELEASE, MCHSM_RC_LOST);
}

mchsm_rc_t mchsm_begin(mchsm_t *h, uint8_t cmd, uint8_t ctx, uint32_t len)
{
    uint32_t word;
    mchsm_rc_t rc;
    mchsm_bus_t b;

    if (h->st_open)
        return MCHSM_RC_STATE;
    b = h->write32(h->bus, MCHSM_REG_LEN, len, h->caller);
    if (b == MCHSM_BUS_FAULT)
        return MCHSM_RC_BUS;
    if (b == MCHSM_BUS_REFUSED) {
        /* lost already, or a command of ours that an earlier failed call left behind */
        rc = read_status(h, 0, &word);
        if (rc != MCHSM_RC_OK)
            return rc;
        if (word & MCHSM_STATUS_EXPECTS_MASK) {
            rc = wr(h, MCHSM_REG_CTRL, MCHSM_CTRL_ABORT, MCHSM_RC_LOST);
            if (rc != MCHSM_RC_OK)
                return rc;
        }
        rc = wait_done(h, 0, &word);
        if (rc != MCHSM_RC_OK)
            return rc;
        rc = wr(h, MCHSM_REG_LEN, len, MCHSM_RC_LOST);
        if (rc != MCHSM_RC_OK)
            return rc;
    }
    rc = wr(h, MCHSM_REG_CMD,
            (((uint32_t)cmd << MCHSM_CMD_CODE_SHIFT) & MCHSM_CMD_CODE_MASK) |
                (((uint32_t)ctx << MCHSM_CMD_CTX_SHIFT) & MCHSM_CMD_CTX_MASK),
            MCHSM_RC_LOST);
    if (rc != MCHSM_RC_OK)
        return rc;
    /* Lost now: it waited for data (aborted) or failed its checks (done at once); neither
     * changed anything. A command without data ran at the CMD write. */
    rc = read_status(h, len == 0u, &word);
    if (rc != MCHSM_RC_OK)
        return rc;
    h->st_word = word;
    h->st_left = len;
    h->st_carry = 0u;
    h->st_carried = 0u;
    h->st_rc = MCHSM_RC_OK;
    h->st_cmd = cmd;
    h->st_open = 1u;
    return MCHSM_RC_OK;
}

static mchsm_rc_t send_carry(mchsm_t *h)
{
    uint32_t word;
    mchsm_rc_t rc = wr(h, MCHSM_REG_DATA, h->st_carry, MCHSM_RC_LOST);

    h->st_carry = 0u;
    h->st_carried = 0u;
    if (rc == MCHSM_RC_LOST) {
        /* Lost, or ended early: a command that fails a check on a data word (ATTEST's
         * selection, UPDATE's version) is done at once and refuses the rest, which a caller
         * that streams its data slowly then still sends. mchsm_end reports its status. */
        rc = read_status(h, 0, &word);
        if (rc == MCHSM_RC_OK &&
            (word & (MCHSM_STATUS_EXPECTS_MASK | MCHSM_STATUS_BUSY_MASK)) == 0u) {
            h->st_word = word; /* mchsm_data sends nothing more */
            return MCHSM_RC_OK;
        }
        if (rc == MCHSM_RC_OK)
            rc = MCHSM_RC_LOST;
    }
    if (rc != MCHSM_RC_OK)
        h->st_rc = (uint8_t)rc;
    return rc;
}

mchsm_rc_t mchsm_data(mchsm_t *h, const uint8_t *data, uint32_t n)
{
    uint32_t i;
    mchsm_rc_t rc;

    if (!h->st_open)
        return MCHSM_RC_STATE;
    if (h->st_rc != MCHSM_RC_OK)
        return (mchsm_rc_t)h->st_rc;
    if ((n && !data) || n > h->st_left)
        return MCHSM_RC_ARG;
    h->st_left -= n;
    if (!(h->st_word & MCHSM_STATUS_EXPECTS_MASK))
        return MCHSM_RC_OK; /* it failed its checks and takes no data: mchsm_end says why */
    for (i = 0u; i < n; i++) {
        h->st_carry = (h->st_carry << BYTE_BITS) | data[i];
        if (++h->st_carried == WORD_BYTES) {
            rc = send_carry(h);
            if (rc != MCHSM_RC_OK)
                return rc;
            if (!(h->st_word & MCHSM_STATUS_EXPECTS_MASK))
                return MCHSM_RC_OK; /* it ended at that word: mchsm_end says why */
        }
    }
    if (h->st_left == 0u && h->st_carried) {
        /* the last word: the data's bytes first, the unused low bytes are ignored */
        h->st_carry <<= BYTE_BITS * (WORD_BYTES - h->st_carried);
        return send_carry(h);
    }
    return MCHSM_RC_OK;
}

mchsm_rc_t mchsm_end(mchsm_t *h, uint8_t *result, uint32_t cap)
{
    uint32_t word, reslen, value, cycles, i, j;
    mchsm_rc_t rc;

    if (!h->st_open)
        return MCHSM_RC_STATE;
    if (cap && !result)
        return MCHSM_RC_ARG;
    h->st_open = 0u;
    if (h->st_rc != MCHSM_RC_OK)
        return (mchsm_rc_t)h->st_rc;
    word = h->st_word;
    if (h->st_left && (word & MCHSM_STATUS_EXPECTS_MASK)) {
        /* less data than declared: abort it (it changes nothing) rather than wait forever */
        rc = wr(h, MCHSM_REG_CTRL, MCHSM_CTRL_ABORT, MCHSM_RC_LOST);
        if (rc == MCHSM_RC_OK)
            rc = wait_done(h, 0, &word);
        return rc == MCHSM_RC_OK ? MCHSM_RC_ARG : rc;
    }
    /* All data is in (or none was due): the command runs to its end - the manager cannot take
     * the mailbox while it computes - so losing the mailbox now loses only its result. */
    rc = wait_done(h, 1, &word);
    if (rc != MCHSM_RC_OK)
        return rc;
    reslen = FIELD(word, MCHSM_STATUS_RESLEN);
    for (i = 0u; i < reslen && i < cap; i += WORD_BYTES) {
        rc = rd(h, MCHSM_REG_RESULT + i, &value, MCHSM_RC_LOST_RAN);
        if (rc != MCHSM_RC_OK)
            return rc;
        for (j = 0u; j < WORD_BYTES && i + j < reslen && i + j < cap; j++)
            result[i + j] = (uint8_t)(value >> (BYTE_BITS * (WORD_BYTES - 1u - j)));
    }
    rc = rd(h, MCHSM_REG_CYCLES, &cycles, MCHSM_RC_LOST_RAN);
    if (rc != MCHSM_RC_OK)
        return rc;
    h->status = (uint8_t)FIELD(word, MCHSM_STATUS_STATUS);
    h->result_len = reslen;
    h->cycles = cycles;
    if (reslen > cap)
        return MCHSM_RC_PROTOCOL;
    return h->status == MCHSM_OK ? MCHSM_RC_OK : MCHSM_RC_STATUS;
}

mchsm_rc_t mchsm_run(mchsm_t *h, uint8_t cmd, uint8_t ctx, const uint8_t *data, uint32_t len,
                     uint8_t *result, uint32_t cap)
{
    mchsm_rc_t rc;

    if (h->st_open)
        return MCHSM_RC_STATE;
    if ((len && !data) || (cap && !result))
        return MCHSM_RC_ARG;
    rc = mchsm_begin(h, cmd, ctx, len);
    if (rc != MCHSM_RC_OK)
        return rc;
    (void)mchsm_data(h, data, len); /* a failure is kept and returned by mchsm_end */
    return mchsm_end(h, result, cap);
}

/* After a command on a mailbox we claimed: give it back unless it is gone (lost), the bus
 * failed, or a command still runs (timeout). A refused RELEASE means the manager took the
 * mailbox after the result was read: nothing is lost. */
static mchsm_rc_t release_after(mchsm_t *h, mchsm_rc_t rc)
{
    if (rc == MCHSM_RC_OK || rc == MCHSM_RC_STATUS || rc == MCHSM_RC_PROTOCOL ||
        rc == MCHSM_RC_ARG) {
        if (wr(h, MCHSM_REG_CTRL, MCHSM_CTRL_RELEASE, MCHSM_RC_OK) == MCHSM_RC_BUS)
            return MCHSM_RC_BUS;
    }
    return rc;
}

mchsm_rc_t mchsm_call(mchsm_t *h, uint8_t cmd, uint8_t ctx, const uint8_t *data, uint32_t len,
                      uint8_t *result, uint32_t cap)
{
    uint32_t attempt;
    mchsm_rc_t rc;

    if (h->st_open)
        return MCHSM_RC_STATE;
    if ((len && !data) || (cap && !result))
        return MCHSM_RC_ARG;
    for (attempt = 0u;; attempt++) {
        rc = mchsm_claim(h);
        if (rc != MCHSM_RC_OK)
            return rc;
        rc = mchsm_run(h, cmd, ctx, data, len, result, cap);
        if (rc == MCHSM_RC_LOST && attempt < h->retries)
            continue; /* it changed nothing: issue it again */
        return release_after(h, rc);
    }
}

/* -- typed commands -------------------------------------------------------------------------- */

/* mchsm_call for a result of exactly `size` bytes: a shorter one (an HSM of another protocol,
 * a bus that lies) would leave stale bytes in the caller's buffer. */
static mchsm_rc_t call_exact(mchsm_t *h, uint8_t cmd, uint8_t ctx, const uint8_t *data,
                             uint32_t len, uint8_t *result, uint32_t size)
{
    mchsm_rc_t rc = mchsm_call(h, cmd, ctx, data, len, result, size);

    return rc == MCHSM_RC_OK && h->result_len != size ? MCHSM_RC_PROTOCOL : rc;
}

mchsm_rc_t mchsm_provision(mchsm_t *h, const uint8_t *dev_id, const uint8_t *root_key)
{
    uint8_t data[MCHSM_CMD_PROVISION_DATA_SIZE];

    if (!dev_id || !root_key)
        return MCHSM_RC_ARG;
    copy(data + MCHSM_PROVISION_DATA_DEV_ID_OFFSET, dev_id, MCHSM_PROVISION_DATA_DEV_ID_SIZE);
    copy(data + MCHSM_PROVISION_DATA_ROOT_KEY_OFFSET, root_key,
         MCHSM_PROVISION_DATA_ROOT_KEY_SIZE);
    return mchsm_call(h, MCHSM_CMD_PROVISION, 0u, data, sizeof data, NULL, 0u);
}

mchsm_rc_t mchsm_status(mchsm_t *h, mchsm_status_t *out)
{
    uint8_t r[MCHSM_CMD_STATUS_RESULT_SIZE];
    uint32_t info;
    mchsm_rc_t rc;

    if (!out)
        return MCHSM_RC_ARG;
    rc = call_exact(h, MCHSM_CMD_STATUS, 0u, NULL, 0u, r, sizeof r);
    if (rc != MCHSM_RC_OK)
        return rc;
    info = get_u32(r + MCHSM_STATUS_RESULT_INFO_OFFSET);
    out->provisioned = (uint8_t)FIELD(info, MCHSM_STATUS_INFO_PROVISIONED);
    out->contexts = (uint8_t)FIELD(info, MCHSM_STATUS_INFO_CONTEXTS);
    out->version = (uint8_t)FIELD(info, MCHSM_STATUS_INFO_VERSION);
    out->counter = get_u32(r + MCHSM_STATUS_RESULT_COUNTER_OFFSET);
    out->ok = get_u32(r + MCHSM_STATUS_RESULT_OK_OFFSET);
    out->loaded = get_u32(r + MCHSM_STATUS_RESULT_LOADED_OFFSET);
    out->anomaly = get_u32(r + MCHSM_STATUS_RESULT_ANOMALY_OFFSET);
    copy(out->dev_id, r + MCHSM_STATUS_RESULT_DEV_ID_OFFSET, MCHSM_STATUS_RESULT_DEV_ID_SIZE);
    return rc;
}

mchsm_rc_t mchsm_read_ctx(mchsm_t *h, uint8_t ctx, mchsm_ctx_t *out)
{
    uint8_t r[MCHSM_CMD_READ_CTX_RESULT_SIZE];
    mchsm_rc_t rc;

    if (!out)
        return MCHSM_RC_ARG;
    rc = call_exact(h, MCHSM_CMD_READ_CTX, ctx, NULL, 0u, r, sizeof r);
    if (rc != MCHSM_RC_OK)
        return rc;
    out->flags = get_u32(r + MCHSM_READ_CTX_RESULT_FLAGS_OFFSET);
    out->version = get_u32(r + MCHSM_READ_CTX_RESULT_VERSION_OFFSET);
    copy(out->measurement, r + MCHSM_READ_CTX_RESULT_MEASUREMENT_OFFSET,
         MCHSM_READ_CTX_RESULT_MEASUREMENT_SIZE);
    copy(out->reference, r + MCHSM_READ_CTX_RESULT_REFERENCE_OFFSET,
         MCHSM_READ_CTX_RESULT_REFERENCE_SIZE);
    return rc;
}

mchsm_rc_t mchsm_reset(mchsm_t *h, uint8_t ctx)
{
    return mchsm_call(h, MCHSM_CMD_RESET, ctx, NULL, 0u, NULL, 0u);
}

mchsm_rc_t mchsm_measure(mchsm_t *h, uint8_t ctx, const uint8_t *image, uint32_t len,
                         uint8_t *digest)
{
    return call_exact(h, MCHSM_CMD_MEASURE, ctx, image, len, digest,
                      MCHSM_CMD_MEASURE_RESULT_SIZE);
}

mchsm_rc_t mchsm_measure_begin(mchsm_t *h, uint8_t ctx, uint32_t len)
{
    mchsm_rc_t rc;

    if (h->st_open)
        return MCHSM_RC_STATE;
    rc = mchsm_claim(h);
    if (rc != MCHSM_RC_OK)
        return rc;
    rc = mchsm_begin(h, MCHSM_CMD_MEASURE, ctx, len);
    return rc == MCHSM_RC_OK ? rc : release_after(h, rc);
}

mchsm_rc_t mchsm_measure_end(mchsm_t *h, uint8_t *digest)
{
    mchsm_rc_t rc;

    if (!digest)
        return MCHSM_RC_ARG;
    rc = release_after(h, mchsm_end(h, digest, MCHSM_CMD_MEASURE_RESULT_SIZE));
    return rc == MCHSM_RC_OK && h->result_len != MCHSM_CMD_MEASURE_RESULT_SIZE ? MCHSM_RC_PROTOCOL
                                                                              : rc;
}

mchsm_rc_t mchsm_attest(mchsm_t *h, const uint8_t *nonce, uint32_t sel, mchsm_evidence_t *out)
{
    uint8_t data[MCHSM_CMD_ATTEST_DATA_SIZE];
    uint8_t r[MCHSM_CMD_ATTEST_RESULT_SIZE];
    mchsm_rc_t rc;

    if (!nonce || !out)
        return MCHSM_RC_ARG;
    put_u32(data + MCHSM_ATTEST_DATA_SEL_OFFSET, sel);
    copy(data + MCHSM_ATTEST_DATA_NONCE_OFFSET, nonce, MCHSM_ATTEST_DATA_NONCE_SIZE);
    rc = call_exact(h, MCHSM_CMD_ATTEST, 0u, data, sizeof data, r, sizeof r);
    if (rc != MCHSM_RC_OK)
        return rc;
    out->sel = get_u32(r + MCHSM_ATTEST_RESULT_SEL_OFFSET);
    out->ok = get_u32(r + MCHSM_ATTEST_RESULT_OK_OFFSET);
    out->ctr = get_u32(r + MCHSM_ATTEST_RESULT_CTR_OFFSET);
    copy(out->tag, r + MCHSM_ATTEST_RESULT_TAG_OFFSET, MCHSM_ATTEST_RESULT_TAG_SIZE);
    return rc;
}

mchsm_rc_t mchsm_update(mchsm_t *h, uint8_t ctx, const mchsm_update_auth_t *auth,
                        mchsm_update_ack_t *ack)
{
    uint8_t data[MCHSM_CMD_UPDATE_DATA_SIZE];
    uint8_t r[MCHSM_CMD_UPDATE_RESULT_SIZE];
    mchsm_rc_t rc;

    if (!auth || !ack)
        return MCHSM_RC_ARG;
    put_u32(data + MCHSM_UPDATE_DATA_OLD_OFFSET, auth->old_version);
    put_u32(data + MCHSM_UPDATE_DATA_NEW_OFFSET, auth->new_version);
    copy(data + MCHSM_UPDATE_DATA_REFERENCE_OFFSET, auth->reference,
         MCHSM_UPDATE_DATA_REFERENCE_SIZE);
    copy(data + MCHSM_UPDATE_DATA_TAG_OFFSET, auth->tag, MCHSM_UPDATE_DATA_TAG_SIZE);
    rc = call_exact(h, MCHSM_CMD_UPDATE, ctx, data, sizeof data, r, sizeof r);
    if (rc != MCHSM_RC_OK)
        return rc;
    ack->new_version = get_u32(r + MCHSM_UPDATE_RESULT_NEW_OFFSET);
    copy(ack->ack, r + MCHSM_UPDATE_RESULT_ACK_OFFSET, MCHSM_UPDATE_RESULT_ACK_SIZE);
    return rc;
}

mchsm_rc_t mchsm_task_mac(mchsm_t *h, const uint8_t *data, uint32_t len, uint8_t *tag)
{
    return call_exact(h, MCHSM_CMD_TASK_MAC, 0u, data, len, tag, MCHSM_CMD_TASK_MAC_RESULT_SIZE);
}

mchsm_rc_t mchsm_hash(mchsm_t *h, const uint8_t *data, uint32_t len, uint8_t *digest)
{
    return call_exact(h, MCHSM_CMD_HASH, 0u, data, len, digest, MCHSM_CMD_HASH_RESULT_SIZE);
}

mchsm_rc_t mchsm_hmac_key(mchsm_t *h, const uint8_t *key, uint32_t len)
{
    return mchsm_call(h, MCHSM_CMD_HMAC_KEY, 0u, key, len, NULL, 0u);
}

mchsm_rc_t mchsm_hmac(mchsm_t *h, const uint8_t *data, uint32_t len, uint8_t *tag)
{
    return call_exact(h, MCHSM_CMD_HMAC, 0u, data, len, tag, MCHSM_CMD_HMAC_RESULT_SIZE);
}

const char *mchsm_rc_name(mchsm_rc_t rc)
{
    switch (rc) {
    case MCHSM_RC_OK:
        return "OK";
    case MCHSM_RC_STATUS:
        return "STATUS";
    case MCHSM_RC_BUSY:
        return "BUSY";
    case MCHSM_RC_LOST:
        return "LOST";
    case MCHSM_RC_LOST_RAN:
        return "LOST_RAN";
    case MCHSM_RC_BUS:
        return "BUS";
    case MCHSM_RC_TIMEOUT:
        return "TIMEOUT";
    case MCHSM_RC_ARG:
        return "ARG";
    case MCHSM_RC_NO_DEVICE:
        return "NO_DEVICE";
    case MCHSM_RC_PROTOCOL:
        return "PROTOCOL";
    case MCHSM_RC_STATE:
        return "STATE";
    }
    return "?";
}
