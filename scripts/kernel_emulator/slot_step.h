// A serving step over state slots, for the recurrent mixers' checks (mamba_check,
// gated_delta_check, selective_scan_check): the given sequences as (context after the step,
// new tokens), then a one-token padding sequence (a recorded graph's spare row, its slot
// past the pool) and a trailing padding token; the real sequences hold shuffled slots of a
// pool with two spare slots, so a read of the wrong slot, or a state stored in the wrong
// place, shows.
#pragma once

#include <algorithm>
#include <random>
#include <utility>
#include <vector>

#include "emu_tensor.h"

namespace kiln_emu_slots {

struct SlotStep {
    int real_seqs = 0;
    int num_seqs = 0;
    int tokens = 0;
    std::vector<int> query_start{0}, context_lens, slots, positions;
    int num_state_slots = 0;
    // Per sequence; the padding sequence's is past the pool.
    std::vector<int> state_slots;

    SlotStep(const std::vector<std::pair<int, int>>& given, std::mt19937& rng) {
        std::vector<std::pair<int, int>> seqs = given;
        real_seqs = static_cast<int>(seqs.size());
        seqs.push_back({1, 1});
        num_seqs = static_cast<int>(seqs.size());
        for (int s = 0; s < num_seqs; ++s) {
            auto [ctx, q_len] = seqs[s];
            for (int p = ctx - q_len; p < ctx; ++p) {
                slots.push_back(s >= real_seqs ? -1 : static_cast<int>(slots.size()));
                positions.push_back(p);
            }
            query_start.push_back(query_start.back() + q_len);
            context_lens.push_back(ctx);
        }
        slots.push_back(-1);
        positions.push_back(0);
        tokens = static_cast<int>(slots.size());
        num_state_slots = real_seqs + 2;
        state_slots.resize(num_state_slots);
        for (int i = 0; i < num_state_slots; ++i) state_slots[i] = i;
        std::shuffle(state_slots.begin(), state_slots.end(), rng);
        state_slots.resize(real_seqs);
        state_slots.push_back(num_state_slots);
    }

    // Random old contents of every slot (`values` each): the state part (the first
    // `state_values`) in [-range, range], the windows after it rounded to `d`, as the
    // kernels store them.
    std::vector<float> old_states(kiln_emu_tensor::DType d, long long values,
                                  long long state_values, float range,
                                  std::mt19937& rng) const {
        std::vector<float> states = kiln_emu_tensor::random_values(
            static_cast<size_t>(num_state_slots) * values, range,
            kiln_emu_tensor::DType::F32, rng);
        for (int s = 0; s < num_state_slots; ++s) {
            for (long long i = state_values; i < values; ++i) {
                float& v = states[s * values + i];
                v = kiln_emu_tensor::round_to(d, v);
            }
        }
        return states;
    }
};

}  // namespace kiln_emu_slots
