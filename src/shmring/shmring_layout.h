/* shmring_layout.h: the bytes of a shmring segment, format version 3.0, for C11.
 *
 * GENERATED from src/shmring/_layout.py by `python -m shmring._layout_header`: do not edit;
 * change _layout.py and run it again (tests/test_layout_header.py fails while this file is
 * stale). docs/FORMAT.md describes the same layout in prose and tables.
 *
 * Every constant of _layout.py is here as SHMRING_<its name>: the word indices of each
 * table (C_*: control block, D_*: descriptor, R_*, G_*, W_*: reader, group and writer
 * records) index the u64 words of that table; the structs below name the same words, and a
 * _Static_assert pins each member's offset, so a compiler that lays a struct out differently
 * refuses to build. Everything is little-endian; every mutable field is a u64 that shmring
 * processes access atomically (see FORMAT.md, "Memory ordering"): use __atomic loads and
 * stores on them.
 */
#ifndef SHMRING_LAYOUT_H
#define SHMRING_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shmring format is little-endian (docs/FORMAT.md)"
#endif

/* ---- format version and limits --------------------------------------------------------------- */
#define SHMRING_MAGIC "\x93SHMRING"
/* 3: several writers of an overwrite ring take no lock per frame either */
#define SHMRING_VERSION_MAJOR 3
#define SHMRING_VERSION_MINOR 0
#define SHMRING_CACHE_LINE 64
#define SHMRING_MAX_NDIM 8
#define SHMRING_MAX_READERS 1024
#define SHMRING_MAX_WRITERS 1024
#define SHMRING_MAX_META 65536
#define SHMRING_MAX_GROUP_NAME 32
#define SHMRING_MAX_SLOTS 1048576
#define SHMRING_MAX_SPARE_BUFFERS 1048576 /* overwrite rings: buffers beyond `slots` */
#define SHMRING_MAX_DIM ((uint64_t)1 << 40) /* any one dimension of a frame's shape */
/* 16 TiB: far beyond any /dev/shm, within what mmap can map */
#define SHMRING_MAX_SEGMENT_BYTES ((uint64_t)1 << 44)
#define SHMRING_NONE UINT64_MAX /* "no value" in any u64 field (e.g. a descriptor never written) */
/* sequence numbers beyond this can only come from a damaged header */
#define SHMRING_SEQ_LIMIT ((uint64_t)1 << 62)
/* A descriptor's D_SEQ while a writer of a sequenced overwrite ring owns its position (the */
/* number it writes there, or the frame it evicts, | SEQ_BUSY): readers pass it by. */
#define SHMRING_SEQ_BUSY ((uint64_t)1 << 63)

/* ---- fixed header: bytes 0..255, written once at create -------------------------------------- */
#define SHMRING_FIXED_HEADER_BYTES 256
/* magic (8 bytes), then version_major (u16): all any version must keep */
#define SHMRING_VERSION_END 10
#define SHMRING_CHECKSUM_OFFSET 248 /* CRC-32 of bytes [0, CHECKSUM_OFFSET) as u64 */
#define SHMRING_POLICY_BLOCK 0
#define SHMRING_POLICY_OVERWRITE 1

/* ---- control block: 4 cache lines of u64 words at CONTROL_OFFSET ----------------------------- */
#define SHMRING_CONTROL_OFFSET 256
#define SHMRING_CONTROL_BYTES 256
/* line 0: written by the writer on every frame */
#define SHMRING_C_HEAD 0 /* frames published so far == the next sequence number */
/* every frame with seq < tail is released by all groups and its buffer reused */
#define SHMRING_C_TAIL 1
#define SHMRING_C_FREE_COUNT 2 /* number of valid entries at the start of the free-buffer list */
/* sequenced (shared mode): the next sequence number a writer may claim */
#define SHMRING_C_NEXT_SEQ 3
/* A reclaim (in C only: _publisher.c, shmring_reclaim) stores the free list entries, then */
/* tail, then free count, release stores in that order, with no signal handler between them: */
/* a reader that loads free count and then tail (acquire) never sees a freed buffer both in */
/* the window and on the free list, and a kill between the two stores leaves it in neither */
/* (out of use until a repair rebuilds the list), never in both (freed twice by the next). */
/* line 1: written under the header lock */
/* token of the header-lock holder; non-zero at acquire => holder died */
#define SHMRING_C_LOCK_OWNER 8
#define SHMRING_C_FLAGS 9 /* F_* bits below */
#define SHMRING_C_WRITER_MODE 10 /* MODE_EXCLUSIVE or MODE_SHARED */
#define SHMRING_C_WRITERS 11 /* registered writer records */
#define SHMRING_C_READERS 12 /* registered reader records */
#define SHMRING_C_MEMBERSHIP 13 /* bumped whenever reader or group records change state */
/* line 2: wake-up words */
/* readers asleep (or about to sleep) on head; atomic u32 adds */
#define SHMRING_C_READER_WAITERS 16
/* writers asleep (or about to sleep) on space; atomic u32 adds */
#define SHMRING_C_WRITER_WAITERS 17
#define SHMRING_C_SPACE 18 /* bumped when space may have been freed; futex word = low 32 bits */
/* a sleeping writer wants waking once a release reaches this seq */
#define SHMRING_C_SPACE_WANTED 19
/* bumped when readers are woken (a frame, or the stream closed); futex word */
#define SHMRING_C_FRAMES 20
#define SHMRING_CONTROL_WORDS 32
/* the stream ended (see docs/API.md, "End of stream"): readers drain, then stop */
#define SHMRING_F_CLOSED 1
/* a writer has joined: from now on no live writer and no F_CLOSED = writers died */
#define SHMRING_F_STARTED 2
#define SHMRING_F_SEQUENCED 4 /* shared mode: writers claim numbers (C_NEXT_SEQ) without the lock */
/* set at create: the creator asked for huge pages, so participants ask too */
#define SHMRING_F_HUGE_PAGES 8
#define SHMRING_MODE_EXCLUSIVE 0 /* one writer: it publishes without the lock */
#define SHMRING_MODE_SHARED 1 /* several writers: they sequence frames lock-free (F_SEQUENCED) */

/* ---- descriptor: one per queued frame -------------------------------------------------------- */
#define SHMRING_DESCRIPTORS_OFFSET 512 /* the table follows the control block */
#define SHMRING_D_SEQ 0 /* sequence number of the frame here; NONE until first published */
#define SHMRING_D_BUFFER 1 /* index of the buffer holding the frame */
#define SHMRING_D_FLAGS 2 /* DF_* bits in the low 32 bits; bytes of user metadata in the high 32 */
#define SHMRING_D_TIMESTAMP 3 /* nanoseconds, CLOCK_MONOTONIC unless the writer passed its own */
#define SHMRING_D_SHAPE 5 /* 8 words: the frame's own shape (valid with DF_OWN_SHAPE) */
#define SHMRING_D_META_BYTE_OFFSET 104 /* user metadata bytes start here */
/* overwrite policy: the writer took this frame's buffer; readers skip it */
#define SHMRING_DF_EVICTED 1
/* the frame is smaller than the ring's shape: D_SHAPE holds its own */
#define SHMRING_DF_OWN_SHAPE 2
/* no frame: a claim abandoned, or its writer died; readers skip it (dropped) */
#define SHMRING_DF_SKIP 4
#define SHMRING_META_LEN_SHIFT 32 /* D_FLAGS >> META_LEN_SHIFT = bytes of user metadata */
/* A skip's count (since 2.2): D_FLAGS >> SKIP_COUNT_SHIFT on a DF_SKIP descriptor = frames it */
/* stands for (0, as before 2.2: one), so that one descriptor publishes a gap of many frames */
#define SHMRING_SKIP_COUNT_SHIFT 32
/* the most frames one skip descriptor stands for */
#define SHMRING_MAX_SKIP_COUNT UINT64_C(4294967295)

/* ---- reader record (64 bytes) ---------------------------------------------------------------- */
#define SHMRING_R_STATE 0 /* STATE_FREE / STATE_ACTIVE */
#define SHMRING_R_TOKEN 1 /* random non-zero id of the owning handle */
#define SHMRING_R_PID 2
/* index into the group table, or NONE for a reader that is its own group */
#define SHMRING_R_GROUP 3
/* frames with seq < release are released by this reader (NONE: holds nothing) */
#define SHMRING_R_RELEASE 4
#define SHMRING_R_DROPPED 5 /* frames this reader lost (overwrite policy, skips, latest()) */
/* 1 while counted in C_READER_WAITERS: a reaper of a dead sleeper uncounts it */
#define SHMRING_R_SLEEPING 6
/* overwrite policy: a buffer this reader holds (its first pin), or NONE */
#define SHMRING_R_PINNED 7

/* ---- pin line (64 bytes, overwrite rings, since 2.3): a reader's pins beyond R_PINNED -------- */
/* One line per reader record, same index, in the pin table right before the free list. */
/* writers scan words PIN_HELD .. PIN_HELD + top - 1 (never more than PINS_PER_LINE) */
#define SHMRING_PIN_TOP 0
#define SHMRING_PIN_HELD 1 /* words 1..7: buffers this reader holds beyond R_PINNED, each or NONE */
#define SHMRING_PINS_PER_LINE 7
#define SHMRING_MAX_PINS 8 /* frames one overwrite reader may hold at once */

/* ---- group record (64 bytes): readers sharing one cursor ------------------------------------- */
#define SHMRING_G_STATE 0
#define SHMRING_G_CURSOR 1 /* next sequence number to hand to a member */
#define SHMRING_G_MEMBERS 2
#define SHMRING_G_NAME 3 /* words 3..6: the group name, UTF-8, NUL padded (MAX_GROUP_NAME bytes) */
#define SHMRING_G_NAME_BYTE_OFFSET 24

/* ---- writer record (64 bytes) ---------------------------------------------------------------- */
#define SHMRING_W_STATE 0
#define SHMRING_W_TOKEN 1
#define SHMRING_W_PID 2
/* 1 while the writer is inside a lock-free step (exclusive or sequenced) */
#define SHMRING_W_IN_PUBLISH 3
#define SHMRING_W_CLAIMED 4 /* buffer index this writer has claimed, or NONE */
/* 1 while counted in C_WRITER_WAITERS: a reaper of a dead sleeper uncounts it */
#define SHMRING_W_SLEEPING 5
#define SHMRING_W_CLAIMED_SEQ 6 /* sequenced: the sequence number it claims (or kept), or NONE */
/* 1: its process registered for MEMBARRIER_CMD_GLOBAL_EXPEDITED (since 2.1) */
#define SHMRING_W_EXPEDITED 7
#define SHMRING_RECORD_WORDS 8
#define SHMRING_STATE_FREE 0
#define SHMRING_STATE_ACTIVE 1

/* ---- byte-range locks (kernel OFD locks on the segment file, not bytes in it) ---------------- */
#define SHMRING_LOCK_HEADER 0
#define SHMRING_LOCK_CREATOR 1
#define SHMRING_LOCK_WRITER_BASE 4096
#define SHMRING_LOCK_READER_BASE 8192

/* ---- derived here from _layout.py and _segment.py -------------------------------------------- */
#define SHMRING_MAGIC_BYTES 8 /* bytes of MAGIC (no NUL) */
#define SHMRING_RECORD_BYTES 64 /* each reader, group, writer record */
#define SHMRING_SHM_PREFIX "/dev/shm/shmring." /* + the ring's name */
#define SHMRING_MAX_NAME 64 /* characters of a ring's name */

/* ---- fixed header: bytes 0..255, written once at create -------------------------------------- */
struct shmring_header {
    char magic[8];
    uint16_t version_major;
    uint16_t version_minor;
    uint32_t header_bytes;
    uint64_t segment_bytes;
    uint32_t policy;
    uint32_t slots;
    uint32_t buffers;
    uint32_t max_readers;
    uint32_t max_writers;
    uint32_t meta_size;
    uint32_t ndim;
    uint32_t itemsize;
    char dtype[16];
    uint64_t shape[8];
    uint64_t buffer_bytes;
    uint64_t buffer_stride;
    uint64_t control_offset;
    uint64_t descriptors_offset;
    uint64_t descriptor_bytes;
    uint64_t readers_offset;
    uint64_t groups_offset;
    uint64_t writers_offset;
    uint64_t freelist_offset;
    uint64_t data_offset;
    uint64_t creator_pid;
    uint64_t created_ns;
    uint64_t pins_offset;
    uint64_t reserved;
    uint64_t checksum; /* CRC-32 of bytes [0, CHECKSUM_OFFSET), zero-extended */
};
_Static_assert(offsetof(struct shmring_header, magic) == 0, "magic");
_Static_assert(offsetof(struct shmring_header, version_major) == 8, "version_major");
_Static_assert(offsetof(struct shmring_header, version_minor) == 10, "version_minor");
_Static_assert(offsetof(struct shmring_header, header_bytes) == 12, "header_bytes");
_Static_assert(offsetof(struct shmring_header, segment_bytes) == 16, "segment_bytes");
_Static_assert(offsetof(struct shmring_header, policy) == 24, "policy");
_Static_assert(offsetof(struct shmring_header, slots) == 28, "slots");
_Static_assert(offsetof(struct shmring_header, buffers) == 32, "buffers");
_Static_assert(offsetof(struct shmring_header, max_readers) == 36, "max_readers");
_Static_assert(offsetof(struct shmring_header, max_writers) == 40, "max_writers");
_Static_assert(offsetof(struct shmring_header, meta_size) == 44, "meta_size");
_Static_assert(offsetof(struct shmring_header, ndim) == 48, "ndim");
_Static_assert(offsetof(struct shmring_header, itemsize) == 52, "itemsize");
_Static_assert(offsetof(struct shmring_header, dtype) == 56, "dtype");
_Static_assert(offsetof(struct shmring_header, shape) == 72, "shape");
_Static_assert(offsetof(struct shmring_header, buffer_bytes) == 136, "buffer_bytes");
_Static_assert(offsetof(struct shmring_header, buffer_stride) == 144, "buffer_stride");
_Static_assert(offsetof(struct shmring_header, control_offset) == 152, "control_offset");
_Static_assert(offsetof(struct shmring_header, descriptors_offset) == 160, "descriptors_offset");
_Static_assert(offsetof(struct shmring_header, descriptor_bytes) == 168, "descriptor_bytes");
_Static_assert(offsetof(struct shmring_header, readers_offset) == 176, "readers_offset");
_Static_assert(offsetof(struct shmring_header, groups_offset) == 184, "groups_offset");
_Static_assert(offsetof(struct shmring_header, writers_offset) == 192, "writers_offset");
_Static_assert(offsetof(struct shmring_header, freelist_offset) == 200, "freelist_offset");
_Static_assert(offsetof(struct shmring_header, data_offset) == 208, "data_offset");
_Static_assert(offsetof(struct shmring_header, creator_pid) == 216, "creator_pid");
_Static_assert(offsetof(struct shmring_header, created_ns) == 224, "created_ns");
_Static_assert(offsetof(struct shmring_header, pins_offset) == 232, "pins_offset");
_Static_assert(offsetof(struct shmring_header, reserved) == 240, "reserved");
_Static_assert(offsetof(struct shmring_header, checksum) == 248, "checksum");
_Static_assert(sizeof(struct shmring_header) == 256, "header size");

/* ---- control (256 bytes of u64 words) -------------------------------------------------------- */
struct shmring_control {
    uint64_t head; /* word 0: frames published so far == the next sequence number */
    /* word 1: every frame with seq < tail is released by all groups and its buffer reused */
    uint64_t tail;
    uint64_t free_count; /* word 2: number of valid entries at the start of the free-buffer list */
    /* word 3: sequenced (shared mode): the next sequence number a writer may claim */
    uint64_t next_seq;
    uint64_t reserved4[4]; /* words 4-7 */
    /* word 8: token of the header-lock holder; non-zero at acquire => holder died */
    uint64_t lock_owner;
    uint64_t flags; /* word 9: F_* bits below */
    uint64_t writer_mode; /* word 10: MODE_EXCLUSIVE or MODE_SHARED */
    uint64_t writers; /* word 11: registered writer records */
    uint64_t readers; /* word 12: registered reader records */
    uint64_t membership; /* word 13: bumped whenever reader or group records change state */
    uint64_t reserved14[2]; /* words 14-15 */
    /* word 16: readers asleep (or about to sleep) on head; atomic u32 adds */
    uint64_t reader_waiters;
    /* word 17: writers asleep (or about to sleep) on space; atomic u32 adds */
    uint64_t writer_waiters;
    uint64_t space; /* bumped when space may have been freed; futex word = low 32 bits */
    /* word 19: a sleeping writer wants waking once a release reaches this seq */
    uint64_t space_wanted;
    uint64_t frames; /* bumped when readers are woken (a frame, or the stream closed); futex word */
    uint64_t reserved21[11]; /* words 21-31 */
};
_Static_assert(offsetof(struct shmring_control, head) == 0, "head");
_Static_assert(offsetof(struct shmring_control, tail) == 8, "tail");
_Static_assert(offsetof(struct shmring_control, free_count) == 16, "free_count");
_Static_assert(offsetof(struct shmring_control, next_seq) == 24, "next_seq");
_Static_assert(offsetof(struct shmring_control, lock_owner) == 64, "lock_owner");
_Static_assert(offsetof(struct shmring_control, flags) == 72, "flags");
_Static_assert(offsetof(struct shmring_control, writer_mode) == 80, "writer_mode");
_Static_assert(offsetof(struct shmring_control, writers) == 88, "writers");
_Static_assert(offsetof(struct shmring_control, readers) == 96, "readers");
_Static_assert(offsetof(struct shmring_control, membership) == 104, "membership");
_Static_assert(offsetof(struct shmring_control, reader_waiters) == 128, "reader_waiters");
_Static_assert(offsetof(struct shmring_control, writer_waiters) == 136, "writer_waiters");
_Static_assert(offsetof(struct shmring_control, space) == 144, "space");
_Static_assert(offsetof(struct shmring_control, space_wanted) == 152, "space_wanted");
_Static_assert(offsetof(struct shmring_control, frames) == 160, "frames");
_Static_assert(sizeof(struct shmring_control) == 256, "control size");

/* ---- descriptor (104 bytes of u64 words) ----------------------------------------------------- */
struct shmring_descriptor {
    uint64_t seq; /* word 0: sequence number of the frame here; NONE until first published */
    uint64_t buffer; /* word 1: index of the buffer holding the frame */
    /* word 2: DF_* bits in the low 32 bits; bytes of user metadata in the high 32 */
    uint64_t flags;
    uint64_t timestamp; /* word 3: nanoseconds, CLOCK_MONOTONIC unless the writer passed its own */
    uint64_t reserved4; /* word 4 */
    uint64_t shape[8]; /* 8 words: the frame's own shape (valid with DF_OWN_SHAPE) */
};
_Static_assert(offsetof(struct shmring_descriptor, seq) == 0, "seq");
_Static_assert(offsetof(struct shmring_descriptor, buffer) == 8, "buffer");
_Static_assert(offsetof(struct shmring_descriptor, flags) == 16, "flags");
_Static_assert(offsetof(struct shmring_descriptor, timestamp) == 24, "timestamp");
_Static_assert(offsetof(struct shmring_descriptor, shape) == 40, "shape");
_Static_assert(sizeof(struct shmring_descriptor) == 104, "descriptor size");

/* ---- reader (64 bytes of u64 words) ---------------------------------------------------------- */
struct shmring_reader {
    uint64_t state; /* word 0: STATE_FREE / STATE_ACTIVE */
    uint64_t token; /* word 1: random non-zero id of the owning handle */
    uint64_t pid; /* word 2 */
    /* word 3: index into the group table, or NONE for a reader that is its own group */
    uint64_t group;
    /* word 4: frames with seq < release are released by this reader (NONE: holds nothing) */
    uint64_t release;
    uint64_t dropped; /* word 5: frames this reader lost (overwrite policy, skips, latest()) */
    /* word 6: 1 while counted in C_READER_WAITERS: a reaper of a dead sleeper uncounts it */
    uint64_t sleeping;
    /* word 7: overwrite policy: a buffer this reader holds (its first pin), or NONE */
    uint64_t pinned;
};
_Static_assert(offsetof(struct shmring_reader, state) == 0, "state");
_Static_assert(offsetof(struct shmring_reader, token) == 8, "token");
_Static_assert(offsetof(struct shmring_reader, pid) == 16, "pid");
_Static_assert(offsetof(struct shmring_reader, group) == 24, "group");
_Static_assert(offsetof(struct shmring_reader, release) == 32, "release");
_Static_assert(offsetof(struct shmring_reader, dropped) == 40, "dropped");
_Static_assert(offsetof(struct shmring_reader, sleeping) == 48, "sleeping");
_Static_assert(offsetof(struct shmring_reader, pinned) == 56, "pinned");
_Static_assert(sizeof(struct shmring_reader) == 64, "reader size");

/* ---- group (64 bytes of u64 words) ----------------------------------------------------------- */
struct shmring_group {
    uint64_t state; /* word 0 */
    uint64_t cursor; /* word 1: next sequence number to hand to a member */
    uint64_t members; /* word 2 */
    char name[32]; /* words 3..6: the group name, UTF-8, NUL padded (MAX_GROUP_NAME bytes) */
    uint64_t reserved7; /* word 7 */
};
_Static_assert(offsetof(struct shmring_group, state) == 0, "state");
_Static_assert(offsetof(struct shmring_group, cursor) == 8, "cursor");
_Static_assert(offsetof(struct shmring_group, members) == 16, "members");
_Static_assert(offsetof(struct shmring_group, name) == 24, "name");
_Static_assert(sizeof(struct shmring_group) == 64, "group size");

/* ---- writer (64 bytes of u64 words) ---------------------------------------------------------- */
struct shmring_writer {
    uint64_t state; /* word 0 */
    uint64_t token; /* word 1 */
    uint64_t pid; /* word 2 */
    /* word 3: 1 while the writer is inside a lock-free step (exclusive or sequenced) */
    uint64_t in_publish;
    uint64_t claimed; /* word 4: buffer index this writer has claimed, or NONE */
    /* word 5: 1 while counted in C_WRITER_WAITERS: a reaper of a dead sleeper uncounts it */
    uint64_t sleeping;
    uint64_t claimed_seq; /* word 6: sequenced: the sequence number it claims (or kept), or NONE */
    /* word 7: 1: its process registered for MEMBARRIER_CMD_GLOBAL_EXPEDITED (since 2.1) */
    uint64_t expedited;
};
_Static_assert(offsetof(struct shmring_writer, state) == 0, "state");
_Static_assert(offsetof(struct shmring_writer, token) == 8, "token");
_Static_assert(offsetof(struct shmring_writer, pid) == 16, "pid");
_Static_assert(offsetof(struct shmring_writer, in_publish) == 24, "in_publish");
_Static_assert(offsetof(struct shmring_writer, claimed) == 32, "claimed");
_Static_assert(offsetof(struct shmring_writer, sleeping) == 40, "sleeping");
_Static_assert(offsetof(struct shmring_writer, claimed_seq) == 48, "claimed_seq");
_Static_assert(offsetof(struct shmring_writer, expedited) == 56, "expedited");
_Static_assert(sizeof(struct shmring_writer) == 64, "writer size");

/* ---- pin_line (64 bytes of u64 words) -------------------------------------------------------- */
struct shmring_pin_line {
    /* writers scan words PIN_HELD .. PIN_HELD + top - 1 (never more than PINS_PER_LINE) */
    uint64_t top;
    uint64_t held[7]; /* words 1..7: buffers this reader holds beyond R_PINNED, each or NONE */
};
_Static_assert(offsetof(struct shmring_pin_line, top) == 0, "top");
_Static_assert(offsetof(struct shmring_pin_line, held) == 8, "held");
_Static_assert(sizeof(struct shmring_pin_line) == 64, "pin_line size");

/* ---- rules on the words' values -------------------------------------------------------------- */
/* The frames a skip descriptor (D_FLAGS has SHMRING_DF_SKIP) stands for: the count in its
 * high bits, or one if that is 0 (skips written before format 2.2). */
static inline uint64_t shmring_skip_count(uint64_t flags) {
    uint64_t count = flags >> SHMRING_SKIP_COUNT_SHIFT;
    return count ? count : 1;
}

#endif
