#include "batch_queue.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ublkts {
namespace {

// liburing 2.3 predates the name; the kernel has had the flag since 6.12.
constexpr unsigned kUringCmdMultishot = 1u << 1;

// Beside kStopToken (1 << 63, the stop poll), kTargetIoBit (1 << 62, loop
// IO) and kCancelToken (1 << 61, the drain's cancel):
constexpr uint64_t kPrepToken = 1ull << 60;
constexpr uint64_t kFetchToken = 1ull << 59;
constexpr uint64_t kCommitToken = 1ull << 58; // | the commit buffer's index
constexpr uint16_t kFetchGroup = 0;
constexpr size_t kElemBytes = sizeof(ublk::batch_elem);

} // namespace

BatchQueueRunner::BatchQueueRunner(QueueConfig config, int charFd, QueueGroup *group)
    : QueueThread(std::move(config), charFd, group, "b") {}

BatchQueueRunner::~BatchQueueRunner() { Join(); }

void BatchQueueRunner::Serve() {
  // A slot per tag (loop IO) plus the stop poll, the fetch and the commits.
  if (!SetUp(RoundUp(config_.depth + 2 + kCommitBuffers, 2), 0)) return;
  answers_.reserve(config_.depth);
  for (auto &c : commits_) c.resize(config_.depth);

  int ret = SetUpFetchBuffers();
  if (ret != 0) {
    Fail("register fetch buffers", -ret);
  } else if ((ret = Prepare()) != 0) {
    Fail("PREP_IO_CMDS", -ret);
  } else {
    ArmFetch();
    io_uring_submit(&ring_);
    // A fetch the driver refuses fails while it is submitted; one it takes waits for requests.
    unsigned head;
    io_uring_cqe *cqe;
    int refused = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (cqe->user_data == kFetchToken && cqe->res < 0 && cqe->res != -ENOBUFS) refused = cqe->res;
    }
    if (refused != 0) {
      Fail("FETCH_IO_CMDS", -refused);
    } else if (failure_ == 0 && !stopping_) {
      Report("ready", "", 0);
      ServeUntilDone();
    }
  }

  // Closing the ring also cancels the fetch; then its buffer ring may go.
  const bool drained = CloseRing();
  if (fetchRing_ != nullptr) munmap(fetchRing_, fetchRingBytes_);
  fetchRing_ = nullptr;
  Exit(drained);
}

// The provided-buffer ring FETCH_IO_CMDS writes tags into: kFetchBuffers
// buffers of at most 128 tags (what one completion carries), each given
// back to the kernel once its tags have been read.
int BatchQueueRunner::SetUpFetchBuffers() {
  tagsPerFetchBuffer_ = config_.depth < ublk::BATCH_FETCH_MAX_TAGS ? config_.depth : ublk::BATCH_FETCH_MAX_TAGS;
  fetchBuffers_.assign(static_cast<size_t>(kFetchBuffers) * tagsPerFetchBuffer_, 0);
  fetchRingBytes_ = RoundUp(kFetchBuffers * sizeof(io_uring_buf), static_cast<size_t>(sysconf(_SC_PAGESIZE)));
  void *mem = mmap(nullptr, fetchRingBytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return -errno;
  fetchRing_ = static_cast<io_uring_buf_ring *>(mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(fetchRing_);
  reg.ring_entries = kFetchBuffers;
  reg.bgid = kFetchGroup;
  int ret = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (ret < 0) return ret;
  io_uring_buf_ring_init(fetchRing_);
  const int mask = io_uring_buf_ring_mask(kFetchBuffers);
  for (unsigned bid = 0; bid < kFetchBuffers; bid++) {
    io_uring_buf_ring_add(fetchRing_, &fetchBuffers_[static_cast<size_t>(bid) * tagsPerFetchBuffer_],
                          tagsPerFetchBuffer_ * sizeof(uint16_t), static_cast<unsigned short>(bid), mask,
                          static_cast<int>(bid));
  }
  io_uring_buf_ring_advance(fetchRing_, kFetchBuffers);
  return 0;
}

void BatchQueueRunner::PrepBatchCommand(io_uring_sqe *sqe, unsigned cmd, const void *elems, unsigned count,
                                        unsigned flags) {
  std::memset(static_cast<void *>(sqe), 0, sizeof(*sqe));
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = charFd_;
  sqe->cmd_op = ublk::batch_opcode(static_cast<ublk::BatchCmd>(cmd));
  sqe->addr = reinterpret_cast<uint64_t>(elems);
  sqe->len = static_cast<uint32_t>(count * kElemBytes);
  auto *b = reinterpret_cast<ublk::batch_io *>(sqe->cmd);
  b->q_id = config_.qid;
  b->flags = static_cast<uint16_t>(flags);
  b->nr_elem = static_cast<uint16_t>(count);
  b->elem_bytes = static_cast<uint8_t>(kElemBytes);
}

// Hands every tag to the kernel with its buffer (one PREP_IO_CMDS) and
// arms the stop poll; waits for the prep's answer: 0, or -errno.
int BatchQueueRunner::Prepare() {
  if (!ArmStopPoll()) return -failure_;
  std::vector<ublk::batch_elem> elems(config_.depth);
  for (unsigned tag = 0; tag < config_.depth; tag++) {
    elems[tag] = ublk::batch_elem{static_cast<uint16_t>(tag), 0, 0, reinterpret_cast<uint64_t>(mappings_.Buffer(tag))};
  }
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return -failure_;
  PrepBatchCommand(sqe, ublk::IO_PREP_IO_CMDS, elems.data(), config_.depth, ublk::BATCH_F_HAS_BUF_ADDR);
  sqe->user_data = kPrepToken;
  for (;;) {
    io_uring_cqe *cqe = nullptr;
    int ret = io_uring_submit_and_wait(&ring_, 1);
    if (ret < 0 && ret != -EINTR) return ret;
    if (io_uring_peek_cqe(&ring_, &cqe) != 0 || cqe == nullptr) continue;
    const uint64_t userData = cqe->user_data;
    const int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (userData == kStopToken) stopping_ = true;
    if (userData == kPrepToken) return res;
  }
}

// One multishot fetch for the queue, drawing tag arrays from the buffer ring.
void BatchQueueRunner::ArmFetch() {
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return;
  PrepBatchCommand(sqe, ublk::IO_FETCH_IO_CMDS, nullptr, tagsPerFetchBuffer_, 0);
  sqe->len = 0;
  reinterpret_cast<ublk::batch_io *>(sqe->cmd)->elem_bytes = sizeof(uint16_t);
  sqe->uring_cmd_flags = kUringCmdMultishot;
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = kFetchGroup;
  sqe->user_data = kFetchToken;
  fetchArmed_ = true;
}

// Like the per-tag runner's: until a stop is requested, the ring fails, or
// the fetch was aborted and everything this queue was handed is answered
// (a non-waiting pass into the kernel, which also submits the last commit,
// bringing nothing new).
void BatchQueueRunner::ServeUntilDone() {
  while (!stopping_ && failure_ == 0) {
    FlushAnswers();
    const bool settling = aborted_ && targetInflight_ == 0 && answers_.empty() && commitsInflight_ == 0;
    if (!Reap(settling)) return;
    if (settling && completions_.empty()) return;
    for (const Completion &c : completions_) OnCompletion(c.userData, c.res, c.flags);
  }
}

void BatchQueueRunner::OnCompletion(uint64_t userData, int res, unsigned flags) {
  if (userData == kStopToken) {
    stopping_ = true;
  } else if (userData == kFetchToken) {
    OnFetched(res, flags);
  } else if (userData & kTargetIoBit) {
    const unsigned tag = static_cast<unsigned>(userData & 0xffff);
    targetInflight_--;
    OnLoopIo(tag, userData, res);
  } else if (userData & kCommitToken) {
    OnCommitted(static_cast<unsigned>(userData & 0xff), res);
  }
}

// A fetch completion: the tags in its buffer each have a request, whose
// descriptor (and, for a write, data) is in place. Without IORING_CQE_F_MORE
// the fetch has ended: out of buffers (armed again), or aborted.
void BatchQueueRunner::OnFetched(int res, unsigned flags) {
  if (flags & IORING_CQE_F_BUFFER) {
    const unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    uint16_t *tags = &fetchBuffers_[static_cast<size_t>(bid) * tagsPerFetchBuffer_];
    const unsigned count = res > 0 ? static_cast<unsigned>(res) / sizeof(uint16_t) : 0;
    for (unsigned i = 0; i < count; i++) {
      if (tags[i] >= config_.depth) {
        Fail("FETCH_IO_CMDS", EPROTO);
        return;
      }
      ios_++;
      ServeRequest(tags[i]);
    }
    io_uring_buf_ring_add(fetchRing_, tags, tagsPerFetchBuffer_ * sizeof(uint16_t), static_cast<unsigned short>(bid),
                          io_uring_buf_ring_mask(kFetchBuffers), 0);
    io_uring_buf_ring_advance(fetchRing_, 1);
  }
  if (flags & IORING_CQE_F_MORE) return;
  fetchArmed_ = false;
  if (res == -ENODEV) {
    aborted_ = true;
  } else if (res >= 0 || res == -ENOBUFS) {
    ArmFetch();
  } else {
    Fail("FETCH_IO_CMDS", -res);
  }
}

// A commit answers its elements in order and stops at the first it cannot:
// the rest stay with this queue, unanswered, so the queue ends (closing
// /dev/ublkcN hands them back to the kernel).
void BatchQueueRunner::OnCommitted(unsigned buffer, int res) {
  if (buffer >= kCommitBuffers) return;
  commitBusy_[buffer] = false;
  commitsInflight_--;
  if (res < 0) {
    Fail("COMMIT_IO_CMDS", -res);
  } else if (static_cast<size_t>(res) < commitCount_[buffer] * kElemBytes) {
    // The kernel says how far it got, not why it stopped there.
    Fail("COMMIT_IO_CMDS (partly done)", EIO);
  }
}

void BatchQueueRunner::ServeRequest(unsigned tag) {
  const ublk::io_desc &iod = mappings_.Descriptor(tag);
  if (config_.readOnly && ChangesData(iod)) return Answer(tag, -EROFS);
  ServeWithTarget(tag);
}

void BatchQueueRunner::Answer(unsigned tag, int result) {
  answers_.push_back(
      ublk::batch_elem{static_cast<uint16_t>(tag), 0, result, reinterpret_cast<uint64_t>(mappings_.Buffer(tag))});
}

// Sends the answers gathered so far in one COMMIT_IO_CMDS, if a commit
// buffer is free; otherwise they wait for one (a commit in flight frees it).
void BatchQueueRunner::FlushAnswers() {
  if (answers_.empty()) return;
  for (unsigned i = 0; i < kCommitBuffers; i++) {
    if (commitBusy_[i]) continue;
    io_uring_sqe *sqe = GetSqe();
    if (sqe == nullptr) return;
    std::memcpy(commits_[i].data(), answers_.data(), answers_.size() * kElemBytes);
    PrepBatchCommand(sqe, ublk::IO_COMMIT_IO_CMDS, commits_[i].data(), static_cast<unsigned>(answers_.size()),
                     ublk::BATCH_F_HAS_BUF_ADDR);
    sqe->user_data = kCommitToken | i;
    commitBusy_[i] = true;
    commitCount_[i] = static_cast<unsigned>(answers_.size());
    commitsInflight_++;
    answers_.clear();
    return;
  }
}

} // namespace ublkts
