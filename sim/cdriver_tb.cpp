// The C driver (mchsm_hsm.c) against the exported Verilog under Verilator, without cocotb.
//
//     cdriver_tb INPUTS
//
// main() clocks the Verilated core and implements the driver's two access functions as
// Wishbone B4 classic cycles (the same timing as sim/wishbone_bfm.py: drive after a
// rising edge, sample ack/err/dat_r before the next one, err = refused). It runs the scenario
// of sim/cdriver.py and prints one line per result; sim/cdriver.py runs the same
// scenario through the Python driver and the test suite compares the two, line by line.
// INPUTS holds one "name value..." line per input (hex bytes, or decimal numbers); the Python
// side writes it, including the verifier's update authorisations: nothing here is
// cryptography. Lines starting "c-only " check what only the C driver has (its streaming
// calls' argument checks). Statistics go to stderr.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "Vhsm.h"
#include "mchsm_hsm.h"
#include "verilated.h"

namespace {

typedef std::vector<uint8_t> Bytes;

// Amaranth names the bus ports bus__adr, bus__ack ...; Verilator escapes a double underscore in
// a C++ member name as ___05F
#define WB(name) bus___05F##name

// cycles to wait for ack or err before the access function reports a bus fault
const unsigned ACK_TIMEOUT = 10000;

// Before the `nth` access of `victim` to `offset` (a write or a read), the manager claims the
// mailbox (and gives it back at once if `release`): a preemption at a chosen point.
struct Hook {
    bool armed = false;
    uint8_t victim = 0;
    uint32_t offset = 0;
    bool write = false;
    int nth = 0;
    bool release = false;
    int count = 0;
};

struct Bench {
    std::unique_ptr<VerilatedContext> context;
    std::unique_ptr<Vhsm> top;
    uint64_t cycles = 0;
    uint64_t reads = 0;
    uint64_t writes = 0;
    uint64_t refused = 0;
    Hook hook;

    Bench() : context(new VerilatedContext), top(new Vhsm(context.get())) {
        top->clk = 0;
        top->rst = 1;
        idle();
        for (int i = 0; i < 4; i++) tick();
        top->rst = 0;
        tick();
    }
    void tick() {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
        cycles++;
    }
    void idle() {
        top->WB(cyc) = 0;
        top->WB(stb) = 0;
        top->WB(we) = 0;
        top->WB(sel) = 0;
    }
    mchsm_bus_t access(uint32_t offset, bool we, uint32_t wdata, uint8_t caller, uint32_t *rdata);
};

const char *outcome_name(mchsm_bus_t b) {
    return b == MCHSM_BUS_ACK ? "ack" : b == MCHSM_BUS_REFUSED ? "refused" : "fault";
}

void preempt(Bench *b) {
    uint32_t ignored;
    mchsm_bus_t o = b->access(MCHSM_REG_CTRL, true, MCHSM_CTRL_CLAIM, MCHSM_MANAGER, &ignored);
    std::printf("hook manager.claim %s\n", outcome_name(o));
    if (b->hook.release) {
        o = b->access(MCHSM_REG_CTRL, true, MCHSM_CTRL_RELEASE, MCHSM_MANAGER, &ignored);
        std::printf("hook manager.release %s\n", outcome_name(o));
    }
}

// One Wishbone classic cycle; err -> refused, no answer within ACK_TIMEOUT -> fault.
mchsm_bus_t Bench::access(uint32_t offset, bool we, uint32_t wdata, uint8_t caller,
                          uint32_t *rdata) {
    if (hook.armed && caller == hook.victim && offset == hook.offset && we == hook.write &&
        ++hook.count == hook.nth) {
        hook.armed = false;
        preempt(this);
    }
    *rdata = 0;
    if (offset % MCHSM_U32_SIZE || offset / MCHSM_U32_SIZE >= (1u << MCHSM_BUS_ADDR_WIDTH) ||
        caller >= (1u << MCHSM_CALLER_BITS))
        return MCHSM_BUS_FAULT;
    top->WB(adr) = offset / MCHSM_U32_SIZE;
    top->WB(dat_w) = wdata;
    top->WB(we) = we;
    top->WB(sel) = 1;
    top->caller = caller;
    top->WB(cyc) = 1;
    top->WB(stb) = 1;
    for (unsigned waited = 0; waited < ACK_TIMEOUT; waited++) {
        top->clk = 0;
        top->eval();
        bool ack = top->WB(ack), err = top->WB(err);
        uint32_t data = top->WB(dat_r);
        top->clk = 1;
        top->eval();
        cycles++;
        if (ack || err) {
            idle();  // the next access drives the bus again before the next edge
            (we ? writes : reads)++;
            if (err) {
                refused++;
                return MCHSM_BUS_REFUSED;
            }
            if (!we) *rdata = data;
            return MCHSM_BUS_ACK;
        }
    }
    idle();
    return MCHSM_BUS_FAULT;
}

// The driver's two access functions: what an integrator writes for their own bus.
mchsm_bus_t tb_read32(void *bus, uint32_t offset, uint8_t caller, uint32_t *value) {
    return static_cast<Bench *>(bus)->access(offset, false, 0, caller, value);
}

mchsm_bus_t tb_write32(void *bus, uint32_t offset, uint32_t value, uint8_t caller) {
    uint32_t ignored;
    return static_cast<Bench *>(bus)->access(offset, true, value, caller, &ignored);
}

// -- inputs and output ------------------------------------------------------------------------

std::map<std::string, std::vector<std::string>> inputs;

const std::vector<std::string> &input(const std::string &name) {
    auto it = inputs.find(name);
    if (it == inputs.end()) {
        std::fprintf(stderr, "cdriver_tb: input %s is missing\n", name.c_str());
        std::exit(2);
    }
    return it->second;
}

Bytes unhex(const std::string &text) {
    Bytes out;
    if (text == "-") return out;  // empty
    for (size_t i = 0; i + 1 < text.size(); i += 2)
        out.push_back(static_cast<uint8_t>(std::stoul(text.substr(i, 2), nullptr, 16)));
    return out;
}

Bytes bytes_in(const std::string &name, size_t i = 0) { return unhex(input(name).at(i)); }
uint32_t number_in(const std::string &name, size_t i = 0) {
    return static_cast<uint32_t>(std::stoul(input(name).at(i)));
}

std::string hex(const uint8_t *p, size_t n) {
    std::string out;
    char buf[3];
    for (size_t i = 0; i < n; i++) {
        std::snprintf(buf, sizeof buf, "%02x", p[i]);
        out += buf;
    }
    return out.empty() ? "-" : out;
}

std::string hex32(uint32_t v) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", v);
    return buf;
}

// "<label> rc=<RC>[ status=<hex>][ <fields if OK>]"
void report(const std::string &label, const mchsm_t &h, mchsm_rc_t rc,
            const std::string &fields = "") {
    std::printf("%s rc=%s", label.c_str(), mchsm_rc_name(rc));
    if (rc == MCHSM_RC_STATUS) std::printf(" status=%02x", h.status);
    if (rc == MCHSM_RC_OK && !fields.empty()) std::printf(" %s", fields.c_str());
    std::printf("\n");
}

void raw_read(Bench &b, const std::string &label, uint32_t offset, uint8_t caller) {
    uint32_t v;
    mchsm_bus_t o = b.access(offset, false, 0, caller, &v);
    std::printf("raw %s %s %s\n", label.c_str(), outcome_name(o), hex32(v).c_str());
}

void raw_write(Bench &b, const std::string &label, uint32_t offset, uint32_t value,
               uint8_t caller) {
    uint32_t ignored;
    std::printf("raw %s %s\n", label.c_str(),
                outcome_name(b.access(offset, true, value, caller, &ignored)));
}

std::string status_fields(const mchsm_status_t &s) {
    std::ostringstream o;
    o << "provisioned=" << unsigned(s.provisioned) << " contexts=" << unsigned(s.contexts)
      << " version=" << unsigned(s.version) << " counter=" << s.counter
      << " ok=" << hex32(s.ok) << " loaded=" << hex32(s.loaded)
      << " anomaly=" << hex32(s.anomaly) << " dev_id=" << hex(s.dev_id, sizeof s.dev_id);
    return o.str();
}

std::string ctx_fields(const mchsm_ctx_t &c) {
    return "flags=" + hex32(c.flags) + " version=" + std::to_string(c.version) +
           " measurement=" + hex(c.measurement, sizeof c.measurement) +
           " reference=" + hex(c.reference, sizeof c.reference);
}

std::string digest_field(const char *name, const uint8_t *d) {
    return std::string(name) + "=" + hex(d, MCHSM_DIGEST_SIZE);
}

void arm(Bench &b, uint8_t victim, uint32_t offset, bool write, int nth, bool release) {
    b.hook = Hook();
    b.hook.armed = true;
    b.hook.victim = victim;
    b.hook.offset = offset;
    b.hook.write = write;
    b.hook.nth = nth;
    b.hook.release = release;
}

// -- the scenario (sim/cdriver.py has the same, for the Python driver) --------------------

void scenario(Bench &b) {
    mchsm_t mgr, t[MCHSM_MAX_CONTEXTS + 1];
    mchsm_init(&mgr, tb_read32, tb_write32, &b, MCHSM_MANAGER);
    for (unsigned i = 1; i <= MCHSM_CONTEXTS; i++)
        mchsm_init(&t[i], tb_read32, tb_write32, &b, static_cast<uint8_t>(i));
    uint8_t contexts = 0;
    mchsm_status_t st;
    mchsm_ctx_t cx;
    mchsm_evidence_t ev;
    mchsm_update_ack_t ack;
    uint8_t d[MCHSM_DIGEST_SIZE];
    mchsm_rc_t rc;
    const Bytes dev_id = bytes_in("dev_id"), root = bytes_in("root_key"),
                nonce = bytes_in("nonce");
    const unsigned n = number_in("contexts");

    rc = mchsm_probe(&mgr, &contexts);
    report("probe", mgr, rc, "contexts=" + std::to_string(contexts));
    rc = mchsm_status(&mgr, &st);
    report("status.before", mgr, rc, status_fields(st));
    rc = mchsm_attest(&mgr, nonce.data(), number_in("sel"), &ev);
    report("attest.unprovisioned", mgr, rc);
    rc = mchsm_provision(&mgr, dev_id.data(), root.data());
    report("provision", mgr, rc);
    rc = mchsm_provision(&mgr, dev_id.data(), root.data());
    report("provision.again", mgr, rc);

    // updates from version 0, authorised by the verifier (the inputs carry its tags)
    for (const auto &line : inputs) {
        if (line.first.rfind("update.", 0) != 0) continue;
        const auto &v = line.second;
        mchsm_update_auth_t auth;
        auth.old_version = static_cast<uint32_t>(std::stoul(v.at(1)));
        auth.new_version = static_cast<uint32_t>(std::stoul(v.at(2)));
        Bytes ref = unhex(v.at(3)), tag = unhex(v.at(4));
        std::copy(ref.begin(), ref.end(), auth.reference);
        std::copy(tag.begin(), tag.end(), auth.tag);
        rc = mchsm_update(&mgr, static_cast<uint8_t>(std::stoul(v.at(0))), &auth, &ack);
        report(line.first, mgr, rc,
               "new=" + std::to_string(ack.new_version) + " " + digest_field("ack", ack.ack));
    }
    for (unsigned i = 1; i <= n; i++)
        report("reset." + std::to_string(i), mgr, mchsm_reset(&mgr, static_cast<uint8_t>(i)));

    // images: in memory, streamed in chunks of odd sizes, a wrong one, an empty one
    Bytes image = bytes_in("image.1");
    rc = mchsm_measure(&mgr, 1, image.data(), static_cast<uint32_t>(image.size()), d);
    report("measure.1", mgr, rc, digest_field("digest", d));
    image = bytes_in("image.2");
    rc = mchsm_measure_begin(&mgr, 2, static_cast<uint32_t>(image.size()));
    size_t at = 0;
    for (const auto &chunk : input("chunks.2")) {
        size_t size = std::stoul(chunk);
        if (rc == MCHSM_RC_OK)
            rc = mchsm_data(&mgr, image.data() + at, static_cast<uint32_t>(size));
        at += size;
    }
    rc = mchsm_measure_end(&mgr, d);
    report("measure.2.streamed", mgr, rc, digest_field("digest", d));
    image = bytes_in("wrong.3");
    rc = mchsm_measure(&mgr, 3, image.data(), static_cast<uint32_t>(image.size()), d);
    report("measure.3.wrong", mgr, rc, digest_field("digest", d));
    rc = mchsm_measure(&mgr, 4, nullptr, 0, d);
    report("measure.4.empty", mgr, rc, digest_field("digest", d));
    for (unsigned i = 1; i <= n; i++) {
        rc = mchsm_read_ctx(&mgr, static_cast<uint8_t>(i), &cx);
        report("read_ctx." + std::to_string(i), mgr, rc, ctx_fields(cx));
    }
    rc = mchsm_read_ctx(&t[2], 1, &cx);
    report("read_ctx.1.by_task2", t[2], rc, ctx_fields(cx));
    rc = mchsm_read_ctx(&t[2], 2, &cx);
    report("read_ctx.2.by_task2", t[2], rc, ctx_fields(cx));

    // attestation with the verifier's nonce; then an empty selection
    rc = mchsm_attest(&mgr, nonce.data(), number_in("sel"), &ev);
    report("attest", mgr, rc,
           "sel=" + hex32(ev.sel) + " ok=" + hex32(ev.ok) + " ctr=" + std::to_string(ev.ctr) +
               " " + digest_field("tag", ev.tag));
    rc = mchsm_attest(&mgr, nonce.data(), 0, &ev);
    report("attest.empty_sel", mgr, rc);
    rc = mchsm_status(&mgr, &st);
    report("status.manager", mgr, rc, status_fields(st));
    rc = mchsm_status(&t[1], &st);
    report("status.task1", t[1], rc, status_fields(st));

    // task keys, hashing and HMAC
    const Bytes msg = bytes_in("message"), data = bytes_in("hash_data"), key = bytes_in("hmac_key"),
                hdata = bytes_in("hmac_data");
    const uint32_t msg_len = static_cast<uint32_t>(msg.size());
    rc = mchsm_task_mac(&t[1], msg.data(), msg_len, d);
    report("task_mac.1", t[1], rc, digest_field("tag", d));
    rc = mchsm_task_mac(&t[3], msg.data(), msg_len, d);
    report("task_mac.3.untrusted", t[3], rc, digest_field("tag", d));
    rc = mchsm_task_mac(&mgr, msg.data(), msg_len, d);
    report("task_mac.manager", mgr, rc, digest_field("tag", d));
    rc = mchsm_hash(&t[2], data.data(), static_cast<uint32_t>(data.size()), d);
    report("hash", t[2], rc, digest_field("digest", d));
    rc = mchsm_hash(&t[2], nullptr, 0, d);
    report("hash.empty", t[2], rc, digest_field("digest", d));
    rc = mchsm_hmac(&t[2], hdata.data(), static_cast<uint32_t>(hdata.size()), d);
    report("hmac.no_key", t[2], rc, digest_field("tag", d));
    rc = mchsm_hmac_key(&t[2], key.data(), static_cast<uint32_t>(key.size()));
    report("hmac_key", t[2], rc);
    rc = mchsm_hmac(&t[2], hdata.data(), static_cast<uint32_t>(hdata.size()), d);
    report("hmac", t[2], rc, digest_field("tag", d));
    rc = mchsm_hmac(&t[3], hdata.data(), static_cast<uint32_t>(hdata.size()), d);
    report("hmac.other_task", t[3], rc, digest_field("tag", d));

    // a holder and a caller that is not: refused accesses end with err and change nothing
    report("claim.task1", t[1], mchsm_claim(&t[1]));
    report("claim.task1.again", t[1], mchsm_claim(&t[1]));
    raw_write(b, "task2.claim", MCHSM_REG_CTRL, MCHSM_CTRL_CLAIM, 2);
    raw_write(b, "task2.len", MCHSM_REG_LEN, 4, 2);
    raw_write(b, "task2.release", MCHSM_REG_CTRL, MCHSM_CTRL_RELEASE, 2);
    raw_read(b, "task2.status", MCHSM_REG_STATUS, 2);
    raw_read(b, "task2.owner", MCHSM_REG_OWNER, 2);
    raw_read(b, "task2.len.read", MCHSM_REG_LEN, 2);
    raw_read(b, "task2.result", MCHSM_REG_RESULT, 2);
    t[2].claim_limit = 3;
    rc = mchsm_hash(&t[2], data.data(), static_cast<uint32_t>(data.size()), d);
    report("hash.task2.busy", t[2], rc, digest_field("digest", d));
    t[2].claim_limit = MCHSM_DEFAULT_CLAIM_LIMIT;
    raw_read(b, "task1.status", MCHSM_REG_STATUS, 1);
    report("release.task1", t[1], mchsm_release(&t[1]));
    report("release.task1.again", t[1], mchsm_release(&t[1]));

    // the manager preempts: before the data is in (aborted, nothing changed) ...
    const Bytes block = bytes_in("block");
    const uint32_t block_len = static_cast<uint32_t>(block.size());
    t[1].retries = 0;
    arm(b, 1, MCHSM_REG_DATA, true, 3, false);
    rc = mchsm_hash(&t[1], block.data(), block_len, d);
    report("preempt.data", t[1], rc, digest_field("digest", d));
    raw_read(b, "manager.status", MCHSM_REG_STATUS, MCHSM_MANAGER);
    raw_read(b, "manager.owner", MCHSM_REG_OWNER, MCHSM_MANAGER);
    raw_read(b, "task1.status.after", MCHSM_REG_STATUS, 1);
    raw_write(b, "manager.release", MCHSM_REG_CTRL, MCHSM_CTRL_RELEASE, MCHSM_MANAGER);
    // ... which the driver issues again by itself when the mailbox is free again ...
    t[1].retries = MCHSM_DEFAULT_RETRIES;
    arm(b, 1, MCHSM_REG_DATA, true, 5, true);
    rc = mchsm_hash(&t[1], block.data(), block_len, d);
    report("preempt.data.retried", t[1], rc, digest_field("digest", d));
    // ... and after it ran: the result is gone, the command is not repeated
    arm(b, 1, MCHSM_REG_RESULT, false, 1, false);
    rc = mchsm_hash(&t[1], block.data(), block_len, d);
    report("preempt.result", t[1], rc, digest_field("digest", d));
    raw_read(b, "manager.status.2", MCHSM_REG_STATUS, MCHSM_MANAGER);
    raw_read(b, "manager.result", MCHSM_REG_RESULT, MCHSM_MANAGER);
    raw_write(b, "manager.release.2", MCHSM_REG_CTRL, MCHSM_CTRL_RELEASE, MCHSM_MANAGER);
    rc = mchsm_status(&mgr, &st);
    report("status.end", mgr, rc, status_fields(st));
}

// What only the C driver has: its streaming calls and their argument checks.
void c_only(Bench &b) {
    mchsm_t h;
    uint8_t d[MCHSM_DIGEST_SIZE];
    const Bytes data = bytes_in("hash_data");
    mchsm_init(&h, tb_read32, tb_write32, &b, 2);
    std::printf("c-only data.unbegun rc=%s\n", mchsm_rc_name(mchsm_data(&h, data.data(), 1)));
    std::printf("c-only end.unbegun rc=%s\n", mchsm_rc_name(mchsm_end(&h, d, sizeof d)));
    std::printf("c-only run.null_result rc=%s\n",
                mchsm_rc_name(mchsm_call(&h, MCHSM_CMD_HASH, 0, data.data(), 4, nullptr, 4)));
    // too little data: the driver aborts the command, which changes nothing
    mchsm_rc_t rc = mchsm_claim(&h);
    if (rc == MCHSM_RC_OK) rc = mchsm_begin(&h, MCHSM_CMD_HASH, 0, 64);
    if (rc == MCHSM_RC_OK) rc = mchsm_data(&h, data.data(), 8);
    std::printf("c-only short.data rc=%s\n", mchsm_rc_name(rc));
    std::printf("c-only short.end rc=%s\n", mchsm_rc_name(mchsm_end(&h, d, sizeof d)));
    uint32_t word;
    mchsm_bus_t o = b.access(MCHSM_REG_STATUS, false, 0, 2, &word);
    std::printf("c-only short.status %s %s\n", outcome_name(o), hex32(word).c_str());
    // more data than declared is refused before it reaches the bus
    rc = mchsm_begin(&h, MCHSM_CMD_HASH, 0, 8);
    std::printf("c-only long.begin rc=%s\n", mchsm_rc_name(rc));
    std::printf("c-only long.data rc=%s\n", mchsm_rc_name(mchsm_data(&h, data.data(), 9)));
    std::printf("c-only long.data.fits rc=%s\n", mchsm_rc_name(mchsm_data(&h, data.data(), 8)));
    rc = mchsm_end(&h, d, sizeof d);
    std::printf("c-only long.end rc=%s digest=%s\n", mchsm_rc_name(rc), hex(d, sizeof d).c_str());
    std::printf("c-only release rc=%s\n", mchsm_rc_name(mchsm_release(&h)));
    // a caller that streams its data slowly: ATTEST's selection (here 0, empty) fails at its
    // first word and the command ends there; the rest, sent later, is refused. The driver must
    // report the command's status, not a lost mailbox.
    mchsm_t mgr;
    mchsm_init(&mgr, tb_read32, tb_write32, &b, MCHSM_MANAGER);
    const uint8_t none[4 + MCHSM_DIGEST_SIZE] = {0};
    uint8_t mac[MCHSM_DIGEST_SIZE];
    rc = mchsm_claim(&mgr);
    if (rc == MCHSM_RC_OK) rc = mchsm_begin(&mgr, MCHSM_CMD_ATTEST, 0, sizeof none);
    if (rc == MCHSM_RC_OK) rc = mchsm_data(&mgr, none, 4);
    for (int i = 0; i < 40; i++) b.tick();  // the CPU does something else for a while
    if (rc == MCHSM_RC_OK) rc = mchsm_data(&mgr, none + 4, sizeof none - 4);
    std::printf("c-only slow.data rc=%s\n", mchsm_rc_name(rc));
    rc = mchsm_end(&mgr, mac, sizeof mac);
    report("c-only slow.end", mgr, rc);
    std::printf("c-only slow.release rc=%s\n", mchsm_rc_name(mchsm_release(&mgr)));
    // an access function that faults (here: a caller id the sideband cannot carry) -> BUS
    mchsm_t bad;
    mchsm_init(&bad, tb_read32, tb_write32, &b, static_cast<uint8_t>(1u << MCHSM_CALLER_BITS));
    std::printf("c-only bus.fault rc=%s\n", mchsm_rc_name(mchsm_probe(&bad, nullptr)));
    std::printf("c-only bus.fault.call rc=%s\n", mchsm_rc_name(mchsm_hash(&bad, nullptr, 0, d)));
}

void load(const char *path) {
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "cdriver_tb: cannot read %s\n", path);
        std::exit(2);
    }
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string name, word;
        if (!(words >> name)) continue;
        auto &values = inputs[name];
        while (words >> word) values.push_back(word);
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s INPUTS\n", argv[0]);
        return 2;
    }
    load(argv[1]);
    auto began = std::chrono::steady_clock::now();
    Bench bench;
    scenario(bench);
    c_only(bench);
    std::fflush(stdout);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    std::fprintf(stderr, "cycles %llu reads %llu writes %llu refused %llu seconds %.3f\n",
                 static_cast<unsigned long long>(bench.cycles),
                 static_cast<unsigned long long>(bench.reads),
                 static_cast<unsigned long long>(bench.writes),
                 static_cast<unsigned long long>(bench.refused), seconds);
    bench.top->final();
    return 0;
}
