// Host emulation of one CUDA thread block, for running the refine kernel body without a GPU.
//
// Each of the block's threads is a fiber (ucontext) on one OS thread, scheduled round-robin; a
// fiber runs until it reaches a barrier. __syncthreads waits for all threads of the block,
// __syncwarp and every warp primitive for the 32 lanes of the warp. A barrier that can never
// complete (a thread finished, or threads wait at different barriers with nobody left to run) is
// reported as a deadlock: the emulation catches barriers in divergent code, which hang or
// misbehave on a GPU. It does not model memory races; compute-sanitizer racecheck does that on the
// device. Only included with DSNOT_SIMT_HOST (simt_host_harness.cpp); never under nvcc.
#pragma once
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dsnot {
namespace simt {

class BlockEmu {
 public:
  enum State { kReady, kWaitBlock, kWaitWarp, kDone };

  explicit BlockEmu(int nthreads, size_t stack_bytes = 256 * 1024)
      : n_(nthreads), fibers_(nthreads), slots_(nthreads), warp_waiting_((nthreads + 31) / 32, 0) {
    for (auto& f : fibers_) f.stack.resize(stack_bytes);
  }

  // Runs body() once per thread, as one block. Throws std::runtime_error on a deadlock.
  void run(const std::function<void()>& body) {
    body_ = &body;
    block_waiting_ = 0;
    for (auto& w : warp_waiting_) w = 0;
    for (int t = 0; t < n_; ++t) {
      Fiber& f = fibers_[t];
      f.state = kReady;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &sched_;
      makecontext(&f.ctx, &BlockEmu::trampoline, 0);
    }
    BlockEmu* saved = current();
    current() = this;
    int done = 0;
    int idle_rounds = 0;
    while (done < n_) {
      bool progressed = false;
      done = 0;
      for (int t = 0; t < n_; ++t) {
        if (fibers_[t].state == kDone) {
          ++done;
          continue;
        }
        if (fibers_[t].state != kReady) continue;
        cur_ = t;
        swapcontext(&sched_, &fibers_[t].ctx);
        progressed = true;
        if (!error_.empty()) break;
      }
      if (!error_.empty()) break;
      if (!progressed && done < n_) {
        if (++idle_rounds > 1) {
          error_ = describe_deadlock();
          break;
        }
      } else {
        idle_rounds = 0;
      }
    }
    current() = saved;
    if (!error_.empty()) {
      std::string e = error_;
      error_.clear();
      throw std::runtime_error(e);
    }
  }

  int thread_id() const { return cur_; }

  void sync_block() {
    Fiber& f = fibers_[cur_];
    f.state = kWaitBlock;
    if (++block_waiting_ == live_threads()) {
      for (auto& g : fibers_)
        if (g.state == kWaitBlock) g.state = kReady;
      block_waiting_ = 0;
    }
    yield();
  }

  void sync_warp() {
    const int w = cur_ / 32;
    Fiber& f = fibers_[cur_];
    f.state = kWaitWarp;
    if (++warp_waiting_[w] == warp_size(w)) {
      for (int t = w * 32; t < w * 32 + warp_size(w); ++t)
        if (fibers_[t].state == kWaitWarp) fibers_[t].state = kReady;
      warp_waiting_[w] = 0;
    }
    yield();
  }

  // Publishes v, waits for the warp, calls read(slots of the warp), waits again.
  template <class R>
  R exchange(uint64_t v, const std::function<R(const uint64_t* warp_slots, int lane)>& read) {
    slots_[cur_] = v;
    sync_warp();
    const int w = cur_ / 32;
    R r = read(&slots_[w * 32], cur_ % 32);
    sync_warp();
    return r;
  }

  static BlockEmu*& current() {
    static thread_local BlockEmu* c = nullptr;
    return c;
  }

 private:
  struct Fiber {
    ucontext_t ctx;
    State state = kReady;
    std::vector<char> stack;
  };

  static void trampoline() {
    BlockEmu* b = current();
    try {
      (*b->body_)();
    } catch (const std::exception& e) {
      b->error_ = std::string("exception in emulated thread: ") + e.what();
    }
    b->fibers_[b->cur_].state = kDone;
    // A finished thread no longer counts at block barriers (sm_70+ semantics); if others wait
    // at one, they may now be complete.
    if (b->block_waiting_ > 0 && b->block_waiting_ == b->live_threads()) {
      for (auto& g : b->fibers_)
        if (g.state == kWaitBlock) g.state = kReady;
      b->block_waiting_ = 0;
    }
    // uc_link returns to the scheduler.
  }

  void yield() {
    swapcontext(&fibers_[cur_].ctx, &sched_);
  }

  int live_threads() const {
    int n = 0;
    for (const auto& f : fibers_) n += f.state != kDone ? 1 : 0;
    return n;
  }

  int warp_size(int w) const { return (w + 1) * 32 <= n_ ? 32 : n_ - w * 32; }

  std::string describe_deadlock() const {
    int wb = 0, ww = 0, dn = 0;
    for (const auto& f : fibers_) {
      wb += f.state == kWaitBlock;
      ww += f.state == kWaitWarp;
      dn += f.state == kDone;
    }
    return "deadlock: " + std::to_string(wb) + " threads at a block barrier, " + std::to_string(ww) +
           " at a warp barrier, " + std::to_string(dn) + " finished";
  }

  int n_;
  std::vector<Fiber> fibers_;
  std::vector<uint64_t> slots_;
  std::vector<int> warp_waiting_;
  int block_waiting_ = 0;
  int cur_ = 0;
  ucontext_t sched_;
  const std::function<void()>* body_ = nullptr;
  std::string error_;
};

inline BlockEmu& emu() { return *BlockEmu::current(); }

inline int thread_id() { return emu().thread_id(); }
inline void sync_block() { emu().sync_block(); }
inline void sync_warp() { emu().sync_warp(); }

template <class T>
inline uint64_t to_bits(T v) {
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

template <class T>
inline T shfl_xor_t(T v, int m) {
  return from_bits<T>(emu().exchange<uint64_t>(
      to_bits(v), [m](const uint64_t* s, int lane) { return s[lane ^ m]; }));
}
inline float shfl_xor(float v, int m) { return shfl_xor_t(v, m); }
inline double shfl_xor(double v, int m) { return shfl_xor_t(v, m); }
inline uint32_t shfl_xor(uint32_t v, int m) { return shfl_xor_t(v, m); }
inline uint64_t shfl_xor(uint64_t v, int m) { return shfl_xor_t(v, m); }
inline uint32_t shfl_up(uint32_t v, int d) {
  return static_cast<uint32_t>(emu().exchange<uint64_t>(
      v, [d](const uint64_t* s, int lane) { return lane >= d ? s[lane - d] : s[lane]; }));
}
inline uint32_t shfl(uint32_t v, int src) {
  return static_cast<uint32_t>(emu().exchange<uint64_t>(v, [src](const uint64_t* s, int) { return s[src]; }));
}
inline uint32_t match_any(uint32_t v) {
  return emu().exchange<uint32_t>(v, [](const uint64_t* s, int lane) {
    uint32_t m = 0;
    for (int i = 0; i < 32; ++i) m |= (s[i] == s[lane]) ? (1u << i) : 0u;
    return m;
  });
}
inline uint32_t ballot(bool p) {
  return emu().exchange<uint32_t>(p ? 1 : 0, [](const uint64_t* s, int) {
    uint32_t m = 0;
    for (int i = 0; i < 32; ++i) m |= s[i] ? (1u << i) : 0u;
    return m;
  });
}
inline int popc(uint32_t v) { return __builtin_popcount(v); }
inline int ffs(uint32_t v) { return __builtin_ffs(static_cast<int>(v)); }
inline uint32_t atomic_add(uint32_t* p, uint32_t v) {
  const uint32_t old = *p;
  *p = old + v;
  return old;
}

}  // namespace simt
}  // namespace dsnot
