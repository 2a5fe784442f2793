// Minimal C++ testbench for the Verilated bnnforge_top: no Python in the loop (bench/run.py).
//
// Usage: Vtb PIXELS_FILE FRAMES PIXELS_PER_FRAME OUT_FILE
//
// PIXELS_FILE holds FRAMES * PIXELS_PER_FRAME pixels of BNN_PIXEL_BYTES bytes each (channel 0
// in the low byte), in stream order. The testbench holds reset for RESET_CYCLES cycles, offers
// the pixels back to back (i_stream__valid high while any is left), keeps o_stream__ready high
// and counts output handshakes until FRAMES have come out. Cycle numbering is that of the
// cocotb harness (bnnforge.hw.harness) and of bnnforge.sim.simulate_timing: cycle 0 is the
// first cycle after reset is released; a handshake "in cycle k" is valid & ready just before
// the k-th rising edge. After the last frame it drains a while and counts any extra output.
//
// OUT_FILE receives FRAMES output payloads (BNN_OUT_WORDS little-endian uint32 words each),
// then FRAMES int64 output handshake cycles. One JSON line goes to stdout: frames_out,
// extra_outputs, cycles (last output handshake + 1), sim_cycles (cycles evaluated in the timed
// loop) and wall_s (the timed loop alone: reset and the streaming run, no file I/O).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "Vbnnforge_top.h"
#include "verilated.h"

#ifndef BNN_PIXEL_BYTES
#define BNN_PIXEL_BYTES 1
#endif
#ifndef BNN_OUT_WORDS
#define BNN_OUT_WORDS 11
#endif

// Verilator escapes "__" in port names as "___05F" (i_stream__valid -> i_stream___05Fvalid).
#define I_VALID i_stream___05Fvalid
#define I_READY i_stream___05Fready
#define I_PAYLOAD i_stream___05Fpayload
#define O_VALID o_stream___05Fvalid
#define O_READY o_stream___05Fready
#define O_PAYLOAD o_stream___05Fpayload

static const int RESET_CYCLES = 4;
static const int64_t TIMEOUT_CYCLES = 1000000;

// Scalar ports (up to 64 bits) and wide ports (VlWide) both take a pixel's bytes.
template <typename T>
static inline void set_payload(T& port, const uint8_t* p) {
    uint64_t v = 0;
    for (int b = 0; b < BNN_PIXEL_BYTES; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
    port = static_cast<T>(v);
}
template <std::size_t W>
static inline void set_payload(VlWide<W>& port, const uint8_t* p) {
    for (std::size_t w = 0; w < W; ++w) {
        uint32_t word = 0;
        for (int b = 0; b < 4 && 4 * static_cast<int>(w) + b < BNN_PIXEL_BYTES; ++b)
            word |= static_cast<uint32_t>(p[4 * w + b]) << (8 * b);
        port[w] = word;
    }
}

template <typename T>
static inline void get_payload(const T& port, uint32_t* words) {
    const uint64_t v = static_cast<uint64_t>(port);
    for (int w = 0; w < BNN_OUT_WORDS; ++w) words[w] = w < 2 ? static_cast<uint32_t>(v >> (32 * w)) : 0;
}
template <std::size_t W>
static inline void get_payload(const VlWide<W>& port, uint32_t* words) {
    for (int w = 0; w < BNN_OUT_WORDS; ++w) words[w] = w < static_cast<int>(W) ? port[w] : 0;
}

int main(int argc, char** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s PIXELS_FILE FRAMES PIXELS_PER_FRAME OUT_FILE\n", argv[0]);
        return 2;
    }
    const int64_t frames = std::atoll(argv[2]);
    const int64_t per_frame = std::atoll(argv[3]);
    const int64_t total = frames * per_frame;
    std::vector<uint8_t> pixels(static_cast<std::size_t>(total * BNN_PIXEL_BYTES));
    FILE* f = std::fopen(argv[1], "rb");
    if (!f || std::fread(pixels.data(), 1, pixels.size(), f) != pixels.size()) {
        std::fprintf(stderr, "cannot read %lld pixels from %s\n", static_cast<long long>(total),
                     argv[1]);
        return 2;
    }
    std::fclose(f);
    std::vector<uint32_t> payloads(static_cast<std::size_t>(frames * BNN_OUT_WORDS));
    std::vector<int64_t> out_cycles(static_cast<std::size_t>(frames));

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vbnnforge_top>(ctx.get());

    const auto start = std::chrono::steady_clock::now();
    top->clk = 0;
    top->rst = 1;
    top->I_VALID = 0;
    top->O_READY = 0;
    top->eval();
    for (int r = 0; r < RESET_CYCLES; ++r) {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    }
    top->rst = 0;

    int64_t k = 0, i = 0, j = 0, last_out = 0;
    bool timed_out = false;
    while (j < frames) {
        // Falling edge: drive this cycle's inputs, settle, sample the handshakes.
        const bool valid = i < total;
        top->I_VALID = valid;
        if (valid) set_payload(top->I_PAYLOAD, &pixels[i * BNN_PIXEL_BYTES]);
        top->O_READY = 1;
        top->clk = 0;
        top->eval();
        const bool in_hs = valid && top->I_READY;
        if (top->O_VALID) {
            get_payload(top->O_PAYLOAD, &payloads[j * BNN_OUT_WORDS]);
            out_cycles[j] = k;
            last_out = k;
            ++j;
        }
        top->clk = 1;  // rising edge: the handshakes happen
        top->eval();
        if (in_hs) ++i;
        ++k;
        if (k - last_out > TIMEOUT_CYCLES) {
            timed_out = true;
            break;
        }
    }
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t sim_cycles = k;

    // Drain: the design must not emit a frame it was never given.
    int64_t drain = 64;
    for (int64_t n = 1; n < j; ++n) {
        if (out_cycles[n] - out_cycles[n - 1] + 64 > drain) drain = out_cycles[n] - out_cycles[n - 1] + 64;
    }
    if (j == 1) drain = out_cycles[0] + 64;
    int64_t extra = 0;
    top->I_VALID = 0;
    for (int64_t n = 0; n < drain && !timed_out; ++n) {
        top->clk = 0;
        top->eval();
        if (top->O_VALID) ++extra;
        top->clk = 1;
        top->eval();
    }
    top->final();

    FILE* o = std::fopen(argv[4], "wb");
    if (!o) {
        std::fprintf(stderr, "cannot write %s\n", argv[4]);
        return 2;
    }
    std::fwrite(payloads.data(), sizeof(uint32_t), payloads.size(), o);
    std::fwrite(out_cycles.data(), sizeof(int64_t), out_cycles.size(), o);
    std::fclose(o);
    std::printf("{\"frames_out\": %lld, \"extra_outputs\": %lld, \"cycles\": %lld, "
                "\"sim_cycles\": %lld, \"wall_s\": %.6f, \"timed_out\": %s}\n",
                static_cast<long long>(j), static_cast<long long>(extra),
                static_cast<long long>(j ? last_out + 1 : 0), static_cast<long long>(sim_cycles),
                wall, timed_out ? "true" : "false");
    return timed_out ? 1 : 0;
}
