// loramux::lora_linear: one LoRA linear layer (every slice's shrink and expand) in one call.
//
// Why native: on the CPU each of the ~8 tensor ops a LoRA layer takes in PyTorch costs tens of
// microseconds of fixed overhead whatever its size, and there are 48 such layers a decode step.
// Here one call gathers each adapter's rows, multiplies them by that slot's weights where vLLM
// keeps them (no per-batch laid-out copy), and adds the product into the layer's output.
//
// Invariants: a token whose slot is -1 (a base-model request) is never read or written; each
// product stops at its slot's rank (vLLM zero-pads every slot to max_lora_rank); sums are fp32
// whatever the element type (fp32 or bf16). Prefill and decode rows are one segmented product:
// tokens are sorted by slot and cut into chunks of at most `chunk` rows of one adapter, and the
// chunks of all adapters are the work items of one parallel loop.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace loramux {

constexpr int64_t kMaxSlices = 8;

struct Slice {
  const void* a;
  int64_t a_slot, a_row;
  const void* b;
  int64_t b_slot, b_row;
  int64_t common;  // output columns added: the slice's size, or B's rows when fewer
  int64_t offset;  // the slice's first column in y
};

struct Layer {
  int64_t in, slices, padded_rank;
  Slice s[kMaxSlices];
  const int64_t* ranks;  // per slot
  const void* x;
  int64_t x_row;
  void* y;
  int64_t y_row;
  float scale;
  bool bf16_weights, bf16_activations;
};

struct Item {
  int64_t slot, begin, rows;  // rows order[begin, begin + rows) all belong to `slot`
};

struct Scratch {  // per thread, reused across calls
  std::vector<const float*> inputs;
  std::vector<float> x, h;
};

}  // namespace loramux

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")
#define LORAMUX_ISA avx512
#define LORAMUX_LANES 16
#include "lora_kernels.h"
#undef LORAMUX_ISA
#undef LORAMUX_LANES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define LORAMUX_ISA avx2
#define LORAMUX_LANES 8
#include "lora_kernels.h"
#undef LORAMUX_ISA
#undef LORAMUX_LANES
#pragma GCC pop_options
#endif

#define LORAMUX_ISA generic
#define LORAMUX_LANES 4
#include "lora_kernels.h"
#undef LORAMUX_ISA
#undef LORAMUX_LANES

namespace loramux {
namespace {

using Kernel = void (*)(const Layer&, const Item&, const int64_t*, Scratch&);

struct Isa {
  Kernel kernel;
  const char* name;
};

Isa pick_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return {&avx512::run, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {&avx2::run, "avx2"};
#endif
  return {&generic::run, "generic"};
}

const Isa& isa() {
  static const Isa chosen = pick_isa();
  return chosen;
}

bool is_bf16(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat,
              "loramux.lora_linear: float32 or bfloat16 only, got ", t.scalar_type());
  return t.scalar_type() == at::kBFloat16;
}

// vLLM's [slots, 1, rows, cols] (or [slots, rows, cols]) with unit column stride.
void check_stack(const at::Tensor& w, const char* what) {
  TORCH_CHECK(w.device().is_cpu(), "loramux.lora_linear: ", what, " must be on the CPU");
  TORCH_CHECK(w.dim() == 3 || (w.dim() == 4 && w.size(1) == 1), "loramux.lora_linear: ", what,
              " must be [slots, 1, rows, cols] or [slots, rows, cols]");
  TORCH_CHECK(w.stride(-1) == 1, "loramux.lora_linear: ", what, " needs unit column stride");
}

void lora_linear(at::Tensor y, const at::Tensor& x, at::TensorList lora_a,
                 at::TensorList lora_b, const at::Tensor& indices, const at::Tensor& ranks,
                 double scale, at::IntArrayRef output_slices, int64_t chunk) {
  const int64_t slices = static_cast<int64_t>(lora_a.size());
  TORCH_CHECK(slices >= 1 && slices <= kMaxSlices, "loramux.lora_linear: 1 to ", kMaxSlices,
              " slices");
  TORCH_CHECK(static_cast<int64_t>(lora_b.size()) == slices &&
                  static_cast<int64_t>(output_slices.size()) == slices,
              "loramux.lora_linear: lora_a, lora_b and output_slices differ in length");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0),
              "loramux.lora_linear: x and y must be [tokens, features]");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "loramux.lora_linear: CPU only");
  TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1,
              "loramux.lora_linear: x and y need unit column stride");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "loramux.lora_linear: x and y differ in dtype");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1 &&
                  indices.is_contiguous() && indices.size(0) == x.size(0),
              "loramux.lora_linear: indices must be int64 [tokens]");
  TORCH_CHECK(ranks.scalar_type() == at::kLong && ranks.dim() == 1 && ranks.is_contiguous(),
              "loramux.lora_linear: ranks must be int64 [slots]");
  TORCH_CHECK(chunk >= 1, "loramux.lora_linear: chunk must be positive");

  Layer L{};
  L.in = x.size(1);
  L.slices = slices;
  L.bf16_activations = is_bf16(x);
  L.bf16_weights = is_bf16(lora_a[0]);
  L.scale = static_cast<float>(scale);
  const int64_t slots = lora_a[0].size(0);
  L.padded_rank = lora_a[0].size(-2);
  TORCH_CHECK(ranks.size(0) >= slots, "loramux.lora_linear: a rank for every slot");
  int64_t offset = 0;
  for (int64_t j = 0; j < slices; ++j) {
    const at::Tensor &a = lora_a[j], &b = lora_b[j];
    check_stack(a, "lora_a");
    check_stack(b, "lora_b");
    TORCH_CHECK(a.scalar_type() == lora_a[0].scalar_type() &&
                    b.scalar_type() == lora_a[0].scalar_type(),
                "loramux.lora_linear: every slice's weights in one dtype");
    TORCH_CHECK(a.size(0) == slots && b.size(0) == slots, "loramux.lora_linear: slot counts");
    TORCH_CHECK(a.size(-1) == L.in, "loramux.lora_linear: lora_a's columns must be x's");
    TORCH_CHECK(a.size(-2) == L.padded_rank && b.size(-1) == L.padded_rank,
                "loramux.lora_linear: every slice padded to one rank");
    Slice& s = L.s[j];
    s.a = a.data_ptr();
    s.a_slot = a.stride(0);
    s.a_row = a.stride(-2);
    s.b = b.data_ptr();
    s.b_slot = b.stride(0);
    s.b_row = b.stride(-2);
    s.common = std::min<int64_t>(output_slices[j], b.size(-2));
    s.offset = offset;
    TORCH_CHECK(offset + s.common <= y.size(1), "loramux.lora_linear: slices exceed y");
    offset += output_slices[j];
  }
  L.ranks = ranks.data_ptr<int64_t>();
  L.x = x.data_ptr();
  L.x_row = x.stride(0);
  L.y = y.data_ptr();
  L.y_row = y.stride(0);

  // Counting sort of the tokens by slot, then chunks of one adapter's rows as work items.
  const int64_t tokens = x.size(0);
  const int64_t* index = indices.data_ptr<int64_t>();
  std::vector<int64_t> starts(slots + 1, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t slot = index[t];
    TORCH_CHECK(slot < slots, "loramux.lora_linear: slot ", slot, " out of ", slots);
    if (slot >= 0) ++starts[slot + 1];
  }
  for (int64_t s = 0; s < slots; ++s) starts[s + 1] += starts[s];
  std::vector<int64_t> order(starts[slots]);
  {
    std::vector<int64_t> next(starts.begin(), starts.end() - 1);
    for (int64_t t = 0; t < tokens; ++t)
      if (index[t] >= 0) order[next[index[t]]++] = t;
  }
  std::vector<Item> items;
  for (int64_t s = 0; s < slots; ++s)
    for (int64_t begin = starts[s]; begin < starts[s + 1]; begin += chunk)
      items.push_back({s, begin, std::min(chunk, starts[s + 1] - begin)});
  if (items.empty()) return;
  // Biggest first, so no thread ends the step holding one prefill chunk while the rest wait.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& p, const Item& q) { return p.rows > q.rows; });

  const Kernel kernel = isa().kernel;
  const int64_t count = static_cast<int64_t>(items.size());
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), count);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    thread_local Scratch scratch;
    for (int64_t i = next++; i < count; i = next++) kernel(L, items[i], order.data(), scratch);
  });
}

std::string lora_isa() { return isa().name; }

}  // namespace

TORCH_LIBRARY(loramux, m) {
  m.def(
      "lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor indices, "
      "Tensor ranks, float scale, int[] output_slices, int chunk) -> ()");
  m.def("lora_isa() -> str", &lora_isa);
}

TORCH_LIBRARY_IMPL(loramux, CPU, m) { m.impl("lora_linear", &lora_linear); }

}  // namespace loramux
