#include "queue_thread.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "process.h"
#include "queue.h"

namespace ublkts {
namespace {

int SetupRing(io_uring *ring, unsigned entries, unsigned flags) {
  io_uring_params p{};
  p.flags = flags;
  int ret = io_uring_queue_init_params(entries, ring, &p);
  if (ret == -EINVAL && flags != 0) {
    // Older kernels reject newer setup flags; the plain ring still works.
    io_uring_params plain{};
    ret = io_uring_queue_init_params(entries, ring, &plain);
  }
  return ret;
}

} // namespace

QueueThread::QueueThread(QueueConfig config, int charFd, QueueGroup *group, const char *nameSuffix)
    : config_(std::move(config)), charFd_(charFd), group_(group), nameSuffix_(nameSuffix) {
  stopFd_ = eventfd(0, EFD_CLOEXEC);
}

QueueThread::~QueueThread() {
  Join();
  if (stopFd_ >= 0) close(stopFd_);
}

void QueueThread::Start() {
  thread_ = std::thread([this] { Run(); });
}

void QueueThread::RequestStop() {
  uint64_t one = 1;
  if (stopFd_ >= 0) (void)!write(stopFd_, &one, sizeof(one));
}

void QueueThread::Join() {
  if (thread_.joinable()) thread_.join();
}

void QueueThread::Report(const char *kind, const std::string &op, int err) {
  group_->Emit(new QueueEvent{config_.qid, config_.thread, kind, op, err, ios_});
}

// Records the first failure (for the exit event).
void QueueThread::Fail(const char *op, int err) {
  if (failure_ != 0) return;
  failedOp_ = op;
  failure_ = err;
}

void QueueThread::Run() {
  std::string name = "ublk" + std::to_string(config_.devId) + "q" + std::to_string(config_.qid) + nameSuffix_;
  if (config_.tagStride > 1) name += "t" + std::to_string(config_.thread);
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  BecomeIoFlusher();
  if (!config_.cpus.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu : config_.cpus) CPU_SET(cpu, &set);
    // The queue still works unpinned, only slower: said, not fatal.
    int err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (err != 0) Report("unpinned", "pthread_setaffinity_np", err);
  }
  Serve();
}

bool QueueThread::SetUp(unsigned ringEntries, unsigned ringFlags) {
  if (stopFd_ < 0) {
    Report("exit", "eventfd", EMFILE);
    return false;
  }
  mappings_ = QueueMappings(charFd_, config_.qid, config_.depth, config_.maxIoSize);
  if (mappings_.Errno() != 0) {
    Report("exit", mappings_.FailedOp(), mappings_.Errno());
    return false;
  }
  // Under zero copy the IO buffers are never used: nothing there to lock.
  if (config_.lockMemory && !config_.autoBufReg) {
    int err = 0;
    if (config_.tagStride == 1) {
      err = mappings_.LockBuffers();
    } else {
      // Only this thread's tags: the others lock theirs in their own mapping.
      for (unsigned tag = config_.firstTag; tag < config_.depth && err == 0; tag += config_.tagStride) {
        err = mappings_.LockBuffer(tag);
      }
    }
    if (err != 0) {
      mappings_.Reset();
      Report("exit", "mlock io buffers", err);
      return false;
    }
  }
  int ret = SetupRing(&ring_, ringEntries, ringFlags);
  if (ret < 0) {
    mappings_.Reset();
    Report("exit", "io_uring_setup", -ret);
    return false;
  }
  // On a zero-copy device only flush, discard and write-zeroes come here; reads and writes go on the ring.
  if (config_.target == TargetKind::Memory) {
    memory_ =
        std::make_unique<MemoryStore>(config_.backingFd, config_.sizeBytes, config_.maxIoSize, config_.memoryPages);
  }
  completions_.reserve(ring_.cq.ring_entries);
  return true;
}

bool QueueThread::ArmStopPoll() {
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return false;
  io_uring_prep_poll_add(sqe, stopFd_, POLLIN);
  sqe->user_data = kStopToken;
  return true;
}

bool QueueThread::Reap(bool settling) {
  int ret = settling ? io_uring_submit_and_get_events(&ring_) : io_uring_submit_and_wait(&ring_, 1);
  if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
    Fail("io_uring_enter", -ret);
    return false;
  }
  completions_.clear();
  unsigned head;
  io_uring_cqe *cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) completions_.push_back({cqe->user_data, cqe->res, cqe->flags});
  io_uring_cq_advance(&ring_, static_cast<unsigned>(completions_.size()));
  return true;
}

// A stop can come while loop reads and writes are in flight; they use the
// buffers until they complete. Exiting the ring cancels any command still
// owned by the kernel; only then may the buffers those point at go away.
bool QueueThread::CloseRing() {
  const bool drained = AwaitTargetIo(&ring_, &targetInflight_, kTargetDrainMs);
  io_uring_queue_exit(&ring_);
  return drained;
}

void QueueThread::Exit(bool drained) {
  if (drained) {
    mappings_.Reset();
  } else {
    mappings_.Abandon();
    Fail("drain target IO", ETIMEDOUT);
  }
  memory_.reset();
  Report("exit", failedOp_, failure_);
}

void QueueThread::ServeWithTarget(unsigned tag) {
  const ublk::io_desc &iod = mappings_.Descriptor(tag);
  switch (config_.target) {
  case TargetKind::Null:
    return Answer(tag, NullTargetResult(iod));
  case TargetKind::Memory:
    return Answer(tag, memory_->Io(iod, mappings_.Buffer(tag)));
  case TargetKind::Loop:
    if (config_.backingIsBlockDevice && IoOp(iod) == ublk::IO_OP_DISCARD) {
      return Answer(tag, BlockDeviceDiscard(config_.backingFd, iod));
    }
    return SubmitLoopIo(tag, ZeroStage::ZeroRange);
  }
}

void QueueThread::SubmitLoopIo(unsigned tag, ZeroStage stage) {
  const ublk::io_desc &iod = mappings_.Descriptor(tag);
  if (!LoopTargetSupports(iod)) return Answer(tag, -EOPNOTSUPP);
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return; // the ring failed: GetSqe ended the queue
  LoopTargetPrep(sqe, config_.backingFd, iod, mappings_.Buffer(tag), stage);
  sqe->user_data = kTargetIoBit | StageBits(stage) | tag;
  targetInflight_++;
}

void QueueThread::OnLoopIo(unsigned tag, uint64_t userData, int res) {
  int result = 0;
  ZeroStage next = ZeroStage::ZeroRange;
  if (LoopTargetComplete(mappings_.Descriptor(tag), res, StageOf(userData), &next, &result)) {
    SubmitLoopIo(tag, next);
  } else {
    Answer(tag, result);
  }
}

// The ring has a slot for every tag plus the runner's own commands, so once
// the previous SQEs are submitted a slot is free. A command that found no
// slot would never reach the kernel: its request would hang, and STOP_DEV
// with it. So submit until there is one; a ring that cannot submit ends the queue.
io_uring_sqe *QueueThread::GetSqe() {
  for (;;) {
    io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
    if (sqe != nullptr) return sqe;
    int ret = io_uring_submit(&ring_);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      Fail("io_uring_enter", -ret);
      stopping_ = true;
      return nullptr;
    }
    if (ret <= 0) sched_yield();
  }
}

} // namespace ublkts
