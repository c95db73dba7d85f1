// The exact top-p (nucleus) threshold of each row of probabilities: an XLA FFI custom call
// for the CPU; models/nucleus.py builds and registers it.
//
//   t[r] = the largest float32 bit pattern t such that the mass of row r's entries whose
//          bit pattern is >= t reaches top_p
//
// so the nucleus is {x : bits(p[r, x]) >= t[r]} (non-negative float32 values order like
// their bit patterns). This is the same threshold as rsd_jax.transforms.top_p_threshold
// finds by a 32-step bisection, each step a masked sum over the row; here it takes about
// two passes: the row's mass is binned by the top 12 bits of each pattern (sign, exponent
// and 4 mantissa bits), the bin where the running mass from the top reaches top_p is found,
// and that bin's entries are binned again by the next 12 bits, then by the last 7, each
// time keeping the bin where the running mass reaches top_p (a radix select on mass; no
// sort, so ties and flat laws cost no more than peaked ones). Sums are in float64 (the
// bisection sums in float32: the two may differ only when a nucleus's mass lies within
// float32 rounding of top_p). A row whose whole mass falls short of top_p keeps everything (t = 0). Entries with
// the sign bit set (a softmax never makes them) carry no mass here, and the caller's >= test
// on signed patterns never keeps them. Rows are shared among OpenMP threads.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Three levels of bins over the 31 bits of a non-negative pattern: 12 + 12 + 7 bits.
constexpr int kShift1 = 19, kBins1 = 1 << 12;  // pattern >> 19
constexpr int kShift2 = 7, kBins2 = 1 << 12;   // (pattern >> 7) & 4095
constexpr int kBins3 = 1 << 7;                 // pattern & 127
constexpr int kCrowded = 4096;  // a first-level bin with more entries is not copied out
// Histograms are summed in kCopies interleaved copies, so that a run of entries falling in
// one bin (a flat law) makes kCopies independent chains of additions instead of one.
constexpr int kCopies = 4;

float Value(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Per-row scratch space, one per thread.
struct Scratch {
  std::vector<double> copies = std::vector<double>(kCopies * kBins1);
  std::vector<int32_t> counts = std::vector<int32_t>(kCopies * kBins1);
  std::vector<double> mass = std::vector<double>(kBins1);
  std::vector<int32_t> count = std::vector<int32_t>(kBins1);
  std::vector<uint32_t> members;
};

// mass[k] (and count[k]) over the row's entries whose pattern >> match_shift equals
// `match`, binned by (pattern >> shift) & (bins - 1). Branch-free: other entries add 0.
void Histogram(const uint32_t* bits, const float* p, int64_t v, int match_shift,
               uint32_t match, int shift, int bins, Scratch& s) {
  std::fill(s.copies.begin(), s.copies.begin() + kCopies * bins, 0.0);
  std::fill(s.counts.begin(), s.counts.begin() + kCopies * bins, 0);
  auto add = [&](int64_t i, int c) {
    const bool in = (bits[i] >> match_shift) == match;
    const int64_t k = c * bins + ((bits[i] >> shift) & (bins - 1));
    s.copies[k] += in ? static_cast<double>(p[i]) : 0.0;
    s.counts[k] += in;
  };
  int64_t i = 0;
  for (; i + kCopies <= v; i += kCopies)
    for (int c = 0; c < kCopies; ++c) add(i + c, c);
  for (; i < v; ++i) add(i, 0);
  for (int k = 0; k < bins; ++k) {
    s.mass[k] = 0.0;
    s.count[k] = 0;
    for (int c = 0; c < kCopies; ++c) {
      s.mass[k] += s.copies[c * bins + k];
      s.count[k] += s.counts[c * bins + k];
    }
  }
}

// The non-empty bin (of `bins` masses, highest first) where the running mass from the top,
// starting at `above`, reaches top_p; -1 if it never does. `above` becomes the mass above
// that bin.
int Crossing(const std::vector<double>& mass, int bins, double top_p, double& above) {
  for (int bin = bins - 1; bin >= 0; --bin) {
    if (mass[bin] > 0 && above + mass[bin] >= top_p) return bin;
    above += mass[bin];
  }
  return -1;
}

// Keeps the members whose bin (pattern >> shift & (bins - 1)) is the crossing one; returns
// false when no bin crosses (only by rounding: the bin's mass summed in another order
// reached top_p a level up), in which case every member stays.
bool Narrow(Scratch& s, int shift, int bins, double top_p, double& above) {
  std::fill(s.mass.begin(), s.mass.begin() + bins, 0.0);
  for (uint32_t b : s.members) s.mass[(b >> shift) & (bins - 1)] += Value(b);
  const int bin = Crossing(s.mass, bins, top_p, above);
  if (bin < 0) return false;
  auto outside = [=](uint32_t b) { return static_cast<int>((b >> shift) & (bins - 1)) != bin; };
  s.members.erase(std::remove_if(s.members.begin(), s.members.end(), outside), s.members.end());
  return true;
}

int32_t Threshold(const float* p, int64_t v, double top_p, Scratch& s) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(p);
  // Level 1 over the non-negative entries (sign bit clear).
  Histogram(bits, p, v, 31, 0, kShift1, kBins1, s);
  double above = 0.0;
  const int bin = Crossing(s.mass, kBins1, top_p, above);
  if (bin < 0) return 0;  // the row's whole mass falls short of top_p: keep everything
  const uint32_t prefix1 = static_cast<uint32_t>(bin) << kShift1;
  if (s.count[bin] > kCrowded) {  // a crowded bin (a flat law): two more passes over the row
    Histogram(bits, p, v, kShift1, bin, kShift2, kBins2, s);
    const int sub = Crossing(s.mass, kBins2, top_p, above);
    if (sub < 0) return static_cast<int32_t>(prefix1);  // by rounding: keep the whole bin
    const uint32_t prefix2 = prefix1 | (static_cast<uint32_t>(sub) << kShift2);
    Histogram(bits, p, v, kShift2, prefix2 >> kShift2, 0, kBins3, s);
    const int last = Crossing(s.mass, kBins3, top_p, above);
    return static_cast<int32_t>(last < 0 ? prefix2 : prefix2 | static_cast<uint32_t>(last));
  }
  s.members.clear();
  for (int64_t i = 0; i < v; ++i)
    if ((bits[i] >> kShift1) == static_cast<uint32_t>(bin)) s.members.push_back(bits[i]);
  // After both narrowings every member has the same pattern: the threshold.
  if (Narrow(s, kShift2, kBins2, top_p, above) && Narrow(s, 0, kBins3, top_p, above))
    return static_cast<int32_t>(s.members.front());
  return static_cast<int32_t>(*std::min_element(s.members.begin(), s.members.end()));
}

ffi::Error NucleusImpl(ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> top_p,
                       ffi::ResultBuffer<ffi::S32> threshold) {
  auto dims = probs.dimensions();
  if (dims.size() < 1 || top_p.element_count() != 1)
    return ffi::Error::InvalidArgument("nucleus: want probs[..., V] and a scalar top_p");
  const int64_t v = dims.back();
  const int64_t rows = v ? static_cast<int64_t>(probs.element_count()) / v : 0;
  if (static_cast<int64_t>(threshold->element_count()) != rows)
    return ffi::Error::InvalidArgument("nucleus: want one threshold per row");
  const float* p = probs.typed_data();
  const double tp = top_p.typed_data()[0];
  int32_t* out = threshold->typed_data();
#pragma omp parallel
  {
    Scratch scratch;
#pragma omp for schedule(dynamic)
    for (int64_t r = 0; r < rows; ++r) out[r] = Threshold(p + r * v, v, tp, scratch);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsdNucleusThreshold, NucleusImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
