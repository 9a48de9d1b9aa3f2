#!/usr/bin/env bash
# Runs (or resumes) the embedding job on a fresh Deep Learning AMI instance, then powers the instance off.
#
# Shipped as a CDK asset; the user-data CDK renders (cdk/compute.py) writes RUN_ENV_FILE and JOB_ARGS_FILE, schedules
# the hard stop (shutdown -h +N) and then calls:  user_data.sh RUN_ENV_FILE JOB_ARGS_FILE
#
# Phases, each recorded with its time in s3://<bucket>/runs/<run-id>/_STATUS (job/status.py's schema), together with
# this script's log (_bootstrap.log, also streamed live to CloudWatch Logs):
#   check-gpu (docker, the log stream, nvidia-smi) -> scratch (instance store) -> mount (s3fs, nuScenes read-only; when
#   s3fs cannot be installed or mounted, the job reads the bucket straight from S3 and _STATUS says so: data_source)
#   -> image (build or pull) -> weights (the container starts: sources opened, weights loaded from the account's cache;
#   with --device cuda the job fails here at once when torch sees no usable GPU) -> the job's own phases: embed
#   (progress at least twice a minute), index, project -> publish (manifest checked, logs copied to the run prefix).
# The job writes every committed shard straight to the run prefix, so an instance started for the same run id (the
# group's replacement after a spot reclaim, or a re-run) resumes from what S3 holds.
#
# How a run ends, and what happens to the Auto Scaling group (the "capacity" block below):
#   succeeded, failed                 -> group set to 0 (nothing replaces the instance), power off
#   interrupted: max_run_hours        -> the job is stopped (SIGTERM: it commits and exits 75), group set to 0, power off
#   interrupted: spot, or a signal    -> the job is stopped the same way; the group is left as it is, so it replaces the
#                                        instance and the new one resumes
# The first reason recorded wins: a later trap never overwrites it.
set -euo pipefail
set -o errtrace

RUN_ENV_FILE=${1:?usage: user_data.sh RUN_ENV_FILE JOB_ARGS_FILE}
JOB_ARGS_FILE=${2:?usage: user_data.sh RUN_ENV_FILE JOB_ARGS_FILE}
# shellcheck source=/dev/null
. "$RUN_ENV_FILE"
: "${REGION:?}" "${ARTIFACTS_BUCKET:?}" "${RUN_ID:?}" "${RUN_PREFIX:?}" "${LOG_GROUP:?}" "${MAX_RUN_MINUTES:?}"
: "${NUSCENES_BUCKET:?}" "${NUSCENES_REGION:?}" "${NUSCENES_MOUNT:?}" "${DEADLINE_EPOCH:?}"
IMAGE=${IMAGE:-}
ECR_REGISTRY=${ECR_REGISTRY:-}
ECR_REGION=${ECR_REGION:-$REGION}
SOURCE_ZIP=${SOURCE_ZIP:-/opt/vit-embed/src.zip}
MARKET=${MARKET:-on-demand}
INSTANCE_TYPE=${INSTANCE_TYPE:-unknown}
WEIGHTS_CACHE=${WEIGHTS_CACHE:-} # s3://<bucket>/cache/weights: tag weights stored once per account (job --weights-cache)
KEEP_INSTANCE=${KEEP_INSTANCE:-false} # debugging only: set in RUN_ENV_FILE to skip the final power-off
ASG_NAME=${ASG_NAME:-} # the run's Auto Scaling group (cdk/compute.py); empty outside one
# Where things are and how long things take on the instance; overridable so that tests/rehearsal/ can run this script
# end to end on a machine without a GPU, Docker or AWS.
LOG_FILE=${LOG_FILE:-/var/log/vit-embed.log}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
WORK_DIR=${WORK_DIR:-/opt/vit-embed}
SCRATCH_FALLBACK=${SCRATCH_FALLBACK:-/var/lib/vit-embed}
INSTANCE_STORE_MOUNT=${INSTANCE_STORE_MOUNT:-/mnt/scratch}
STATE_DIR=${STATE_DIR:-/run/vit-embed} # this attempt's state; its `started` file tells the user-data we took over
IMDS_ENDPOINT=${IMDS_ENDPOINT:-http://169.254.169.254}
# The log forwarder: docker/Dockerfile's base image (the build pulls it anyway), `tail -F` of LOG_FILE through the
# awslogs driver, started as soon as Docker runs, so the first phases are visible in minutes rather than at the end.
LOG_IMAGE=${LOG_IMAGE:-public.ecr.aws/docker/library/python:3.11-slim-bookworm}
STOP_MARGIN_S=${STOP_MARGIN_S:-300} # stop the job this long before the deadline: it commits, the logs are copied
MIN_JOB_S=${MIN_JOB_S:-60}          # do not start the job with less time than this left before that stop
STOP_GRACE_S=${STOP_GRACE_S:-35}    # docker stop -t: the job commits and exits within 30 s of SIGTERM
SPOT_POLL_S=${SPOT_POLL_S:-5}       # the spot notice comes two minutes ahead
LEASE_TIMEOUT_S=${LEASE_TIMEOUT_S:-600} # job.lease: a writer's lease without a heartbeat this long is stale
LEASE_POLL_S=${LEASE_POLL_S:-30}        # how often a waiting instance looks at the other writer's lease
STATUS_RULES=${STATUS_RULES:-$WORK_DIR/status_rules.py} # job/status_rules.py, shipped beside this script
# apt on a first boot: cloud-init and Ubuntu's apt-daily jobs hold apt's locks for a while (the lists lock fails
# `apt-get update` at once: DPkg::Lock::Timeout covers only dpkg's lock), so wait for them, then retry with backoff.
APT_ATTEMPTS=${APT_ATTEMPTS:-6}             # tries of update + install ...
APT_RETRY_S=${APT_RETRY_S:-15}              # ... this far apart at first, doubling (15 s to 4 min: ~8 min in all)
APT_DAILY_WAIT_S=${APT_DAILY_WAIT_S:-600}   # wait at most this long for apt-daily(-upgrade) to finish first
# apt reads only Ubuntu's own archive (s3fs is there): the AMI's other sources (NVIDIA's, Docker's, ...) are left out,
# so one of them failing cannot fail the update. Ubuntu 22.04 lists its archive in sources.list, 24.04 in ubuntu.sources.
APT_SOURCE_LIST=${APT_SOURCE_LIST:-/etc/apt/sources.list}
APT_UBUNTU_SOURCES=${APT_UBUNTU_SOURCES:-/etc/apt/sources.list.d/ubuntu.sources}
S3FS_ATTEMPTS=${S3FS_ATTEMPTS:-3} # tries of the mount itself (s3fs installed); then the job reads S3 directly
# s3fs reads the public bucket at its regional endpoint; it stages each open object in a temporary file under its
# tmpdir (the instance store, see mount_nuscenes) and keeps this much of that disk free.
NUSCENES_S3_URL=${NUSCENES_S3_URL:-https://s3.${NUSCENES_REGION}.amazonaws.com}
S3FS_DISKFREE_MB=${S3FS_DISKFREE_MB:-10240}
S3FS_EXTRA_OPTIONS=${S3FS_EXTRA_OPTIONS:-} # more -o options (the rehearsal's local endpoint needs path-style requests)

readonly RUN_URI="s3://${ARTIFACTS_BUCKET}/${RUN_PREFIX}"
readonly CONTAINER=vit-embed LOG_CONTAINER=vit-embed-log
readonly APP_UID=1000        # the non-root user in docker/Dockerfile
readonly EXIT_INTERRUPTED=75 # the job's exit code after a graceful stop (job.errors.Interrupted)
readonly STOP_FILE=$STATE_DIR/stop # line 1: deadline | spot | signal, line 2: the reason. Written once: first wins
readonly JOB_LOG=$WORK_DIR/job.log # the container's output (also in CloudWatch), copied to the run prefix at the end
PHASE=starting
FAIL_REASON=
JOB_IMAGE=
JOB_PID=
SCRATCH=
INSTANCE_ID=unknown
STARTED_AT=$(date -u +%FT%TZ)
ATTEMPT=$(date -u +%Y%m%dT%H%M%SZ) # + the instance id: this attempt's folder of logs, _logs/<attempt>/
LOG_STREAMING=false
WITH_LOGS=false
WAITING_ONLY=false
WATCHERS=()
DATA_SOURCE= # how the job reaches the dataset (mount_nuscenes): recorded in _STATUS as data_source
MOUNT_ERROR=

install -d -m 0755 "$(dirname "$LOG_FILE")" "$WORK_DIR"
exec > >(tee -a "$LOG_FILE") 2>&1

log() { printf '%s vit-embed[%s]: %s\n' "$(date -u +%FT%TZ)" "$PHASE" "$*"; }

fail() {
	FAIL_REASON=$*
	log "FAILED: $*"
	exit 1
}

imds() { # imds PATH: GET an instance-metadata path with an IMDSv2 token
	local token
	token=$(curl -fsS -m 5 -X PUT "${IMDS_ENDPOINT}/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
	curl -fsS -m 5 -H "X-aws-ec2-metadata-token: ${token}" "${IMDS_ENDPOINT}/latest/meta-data/$1"
}

# --- _STATUS ------------------------------------------------------------------------------------------------------
# The document is merged with what S3 holds, because the job writes it too (its phases, its progress, its final word):
# this attempt's document is continued, a new attempt starts a fresh one that remembers the previous outcome, and the
# first terminal status of an attempt stays unless the script forces the stop reason it recorded before the job ended.
# The rules are the job's own, job/status_rules.py (standard library only), shipped beside this script as STATUS_RULES.

write_status() { # write_status running|succeeded|failed|interrupted REASON [PHASE] [force]: _STATUS + _bootstrap.log
	# (+ _logs/<attempt>/bootstrap.log and job.log once WITH_LOGS is set: the copies that outlive the log group)
	local stored up
	stored=$(mktemp -p "$STATE_DIR") up=$(mktemp -d -p "$STATE_DIR")
	# Before the job starts nobody else writes this attempt's document: read S3 only for the previous attempt's.
	if [ -e "$STATE_DIR/job-started" ] || [ ! -e "$STATE_DIR/status.json" ]; then
		aws s3 cp "${RUN_URI}_STATUS" "$stored" --region "$REGION" --only-show-errors >/dev/null 2>&1 || : >"$stored"
	fi
	if env "STARTED_AT=$STARTED_AT" "ATTEMPT=$ATTEMPT" "RUN_ID=$RUN_ID" "RUN_URI=$RUN_URI" "INSTANCE_ID=$INSTANCE_ID" \
		"INSTANCE_TYPE=$INSTANCE_TYPE" "MARKET=$MARKET" "DATA_SOURCE=$DATA_SOURCE" \
		python3 "$STATUS_RULES" "$STATE_DIR/status.json" "$stored" "$1" "$2" "${3:-}" "${4:-}"; then
		cp "$STATE_DIR/status.json" "$up/_STATUS"
		cp "$LOG_FILE" "$up/_bootstrap.log"
		if [ "$WITH_LOGS" = true ]; then # the attempt's last word: its logs too, where they outlive the stack
			mkdir -p "$up/_logs/$ATTEMPT"
			cp "$LOG_FILE" "$up/_logs/$ATTEMPT/bootstrap.log"
			[ ! -e "$JOB_LOG" ] || cp "$JOB_LOG" "$up/_logs/$ATTEMPT/job.log"
		fi
		aws s3 cp "$up" "$RUN_URI" --recursive --region "$REGION" --only-show-errors ||
			log "warning: could not write ${RUN_URI}_STATUS"
	else
		log "warning: could not build the _STATUS document"
	fi
	rm -rf "$stored" "$up"
}

# --- one writer per run (job.lease) ---------------------------------------------------------------------------------
# The job holds the run's _LEASE while it writes. An instance that finds it live (the one before it still shutting
# down after a spot notice, a resume started by hand elsewhere) waits, touching nothing but a note in _STATUS.
lease_holder() { # who holds the run's lease when it is live ("attempt … on host …, last heartbeat N s ago"), else ""
	local copy=$STATE_DIR/lease.json
	rm -f "$copy"
	aws s3 cp "${RUN_URI}_LEASE" "$copy" --region "$REGION" --only-show-errors >/dev/null 2>&1 || return 0
	python3 "$STATUS_RULES" lease "$copy" "$LEASE_TIMEOUT_S"
}

note_waiting() { # note_waiting REASON: a `waiting` note in the holder's _STATUS (its status unchanged)
	local stored
	stored=$(mktemp -p "$STATE_DIR")
	if aws s3 cp "${RUN_URI}_STATUS" "$stored" --region "$REGION" --only-show-errors >/dev/null 2>&1 &&
		python3 "$STATUS_RULES" note "$stored" "$INSTANCE_ID" "$1"; then
		aws s3 cp "$stored" "${RUN_URI}_STATUS" --region "$REGION" --only-show-errors >/dev/null 2>&1 ||
			log "warning: could not note in ${RUN_URI}_STATUS why this instance waits"
	fi
	rm -f "$stored"
}

wait_for_writer() { # while another live writer holds the run: wait (polling), then go on; none: return at once
	local holder noted=false
	while holder=$(lease_holder) && [ -n "$holder" ]; do
		if [ "$noted" = false ]; then
			log "another writer holds ${RUN_URI}: ${holder}; waiting until it is done (checking every ${LEASE_POLL_S}s)"
			note_waiting "instance ${INSTANCE_ID} waits: the run is held by ${holder}"
			noted=true
		fi
		if [ $(($(date +%s) + LEASE_POLL_S + STOP_MARGIN_S + MIN_JOB_S)) -ge "$DEADLINE_EPOCH" ]; then
			WAITING_ONLY=true # this instance never touched the run: its ending writes no status
			log "max_run_hours reached while ${holder} still holds the run; this instance gives up"
			exit "$EXIT_INTERRUPTED"
		fi
		sleep "$LEASE_POLL_S"
	done
	if [ "$noted" = true ]; then
		log "the other writer is done with ${RUN_URI}"
	fi
}
# --- end one writer per run ----------------------------------------------------------------------------------------

phase() { # phase NAME: a new phase begins (recorded with its time)
	PHASE=$1
	log "phase ${PHASE}"
	write_status running "" "$PHASE"
}

on_err() { # remember the first failing command as the reason
	local rc=$1 line=$2 cmd=$3
	[ -n "$FAIL_REASON" ] || FAIL_REASON="exit ${rc} at line ${line} (${PHASE}): ${cmd}"
}

# --- capacity (Auto Scaling group) ------------------------------------------------------------------------------
# The instance runs in a group of at most one (cdk/compute.py). When the run is over (succeeded, failed, or stopped at
# max_run_hours) it sets the group to min = max = desired = 0 before it powers off, or the group would replace it and
# start the run again. After a spot notice or a shutdown it does not: the group's replacement resumes the run. The
# deadline schedule outside the instance (cdk/deadline.py) sets the group to 0 at max_run_hours + margin regardless.
release_cmd() { # the call, for this script and for the hard-stop unit
	printf 'aws autoscaling update-auto-scaling-group --region %q --auto-scaling-group-name %q --min-size 0 --max-size 0 --desired-capacity 0' \
		"$REGION" "$ASG_NAME"
}

release_capacity() {
	[ -n "$ASG_NAME" ] || return 0
	if bash -c "$(release_cmd)"; then
		log "set ${ASG_NAME} to 0: the instance will not be replaced"
	else
		log "warning: could not set ${ASG_NAME} to 0 (the deadline schedule will)"
	fi
}
# --- end capacity ------------------------------------------------------------------------------------------------

# --- stopping: the first reason wins ------------------------------------------------------------------------------
record_stop() { # record_stop KIND REASON: true if this is the first stop reason of the attempt
	(
		set -o noclobber
		printf '%s\n%s\n' "$1" "$2" >"$STOP_FILE"
	) 2>/dev/null
}

request_stop() { # request_stop KIND REASON (from a watcher): record why, write it, then stop the job gracefully
	record_stop "$1" "$2" || return 0
	log "stopping (${1}): ${2}"
	write_status interrupted "$2" "" force # before the job gets the signal: its own reason comes second
	if [ -e "$STATE_DIR/job-started" ]; then
		docker stop -t "$STOP_GRACE_S" "$CONTAINER" >/dev/null 2>&1 || true # SIGTERM: commit, exit 75
	else
		kill -TERM "$$" 2>/dev/null || true # no job yet: end the script (after the command now running)
	fi
}

stop_at_deadline() { # background: at max_run_hours less the margin, record why and stop the job (it commits first)
	PHASE=deadline # this subshell's log tag
	while [ "$(date +%s)" -lt "$1" ]; do sleep 1; done
	request_stop deadline "max_run_hours (${MAX_RUN_MINUTES} min) reached: the job was stopped and committed its shards; the same run id resumes"
}

watch_spot_interruption() { # background: a spot notice stops the job; the group then replaces the instance
	local action
	PHASE=spot-watch # this subshell's log tag
	while sleep "$SPOT_POLL_S"; do
		if action=$(imds spot/instance-action 2>/dev/null); then
			request_stop spot "spot interruption: $(printf '%s' "$action" | tr -d '\n')"
			return 0
		fi
	done
}

stop_job() { # the script is ending while the job runs (a signal): let the job commit, then wait for it
	[ -n "$JOB_PID" ] || return 0
	log "stopping the job container (up to ${STOP_GRACE_S}s to commit)"
	docker stop -t "$STOP_GRACE_S" "$CONTAINER" >/dev/null 2>&1 || true
	wait "$JOB_PID" 2>/dev/null || true
	JOB_PID=
}

on_signal() { # the OS is shutting down, or someone stopped the script: recorded unless a reason is already there
	record_stop signal "terminated by ${1} during ${PHASE} (the instance is shutting down); the same run id resumes" ||
		true
	exit 143
}

on_exit() {
	local rc=$? kind='' why=''
	trap - EXIT ERR
	trap '' TERM INT HUP PIPE # the ending runs to its end, also while the OS shuts down around it
	set +e
	stop_job
	WITH_LOGS=true
	[ "${#WATCHERS[@]}" -eq 0 ] || kill "${WATCHERS[@]}" 2>/dev/null
	if [ "$WAITING_ONLY" = true ]; then # ended while waiting for another writer: its run, its _STATUS
		kind=waiting
		[ ! -s "$STOP_FILE" ] || kind=$(sed -n 1p "$STOP_FILE")
		log "ended while waiting for another writer (${kind}); ${RUN_URI}_STATUS stays that writer's"
	elif [ "$rc" -eq 0 ]; then # the manifest is there: complete, even if a stop came as the job finished
		log "run succeeded: ${RUN_URI}"
		write_status succeeded "" "" force
	elif [ -s "$STOP_FILE" ]; then
		kind=$(sed -n 1p "$STOP_FILE") why=$(sed -n 2p "$STOP_FILE")
		log "run interrupted (${kind}): ${why}"
		write_status interrupted "$why" "" force
	elif [ "$rc" -eq "$EXIT_INTERRUPTED" ]; then
		kind=job # stopped by a signal this script did not send: the job recorded why
		log "the job was interrupted (exit ${rc}); its reason is in _STATUS"
		write_status interrupted "the job was stopped (exit ${rc})"
	else
		log "run failed (exit ${rc}): ${FAIL_REASON:-unknown}"
		write_status failed "${FAIL_REASON:-exit ${rc} in phase ${PHASE}}"
	fi
	if [ "$KEEP_INSTANCE" = true ]; then
		log "KEEP_INSTANCE=true: not powering off (the hard stop at max_run_hours still applies)"
	else
		case $kind in
		spot | signal | job) log "${ASG_NAME:-the group} is left as it is: its next instance resumes ${RUN_URI}" ;;
		*) release_capacity ;;
		esac
		log "powering off (the instance terminates)"
	fi
	if [ "$LOG_STREAMING" = true ]; then
		docker stop -t 5 "$LOG_CONTAINER" >/dev/null 2>&1 || true # the forwarder flushes the last lines
	fi
	if [ "$KEEP_INSTANCE" != true ]; then
		sync
		shutdown -h now "vit-embed: run ended"
	fi
	exit "$rc"
}

trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP

rm -rf "$STATE_DIR"
install -d -m 0700 "$STATE_DIR"
touch "$STATE_DIR/started" # from here on this script ends the run (status, logs, capacity, power-off)

schedule_hard_stop() {
	# Backs up the user-data's `shutdown -h +N`: a persistent timer at the same absolute deadline also fires
	# after a reboot (which would cancel a pending shutdown).
	local deadline
	deadline=$(date -u -d "@${DEADLINE_EPOCH}" '+%Y-%m-%d %H:%M:%S UTC')
	cat >"${SYSTEMD_DIR}/vit-embed-deadline.service" <<-EOF
		[Unit]
		Description=vit-embed hard stop (max_run_hours reached)

		[Service]
		Type=oneshot
		ExecStartPre=-/bin/bash -c '$(release_cmd)'
		ExecStart=/usr/bin/systemctl poweroff
	EOF
	cat >"${SYSTEMD_DIR}/vit-embed-deadline.timer" <<-EOF
		[Unit]
		Description=vit-embed hard stop at ${deadline}

		[Timer]
		OnCalendar=${deadline}
		Persistent=true
		AccuracySec=1s

		[Install]
		WantedBy=timers.target
	EOF
	systemctl daemon-reload
	systemctl enable --now vit-embed-deadline.timer
	log "hard stop scheduled at ${deadline} (max_run_hours)"
}

start_log_stream() { # this script's log, live, in CloudWatch Logs (stream <run-id>/<instance-id>/bootstrap)
	if docker run -d --rm --init --name "$LOG_CONTAINER" \
		--log-driver=awslogs \
		--log-opt "awslogs-region=${REGION}" \
		--log-opt "awslogs-group=${LOG_GROUP}" \
		--log-opt "awslogs-stream=${RUN_ID}/${INSTANCE_ID}/bootstrap" \
		-v "${LOG_FILE}:/var/log/vit-embed.log:ro" \
		"$LOG_IMAGE" tail -F -n +1 /var/log/vit-embed.log >/dev/null; then
		LOG_STREAMING=true
		log "streaming this log to CloudWatch Logs ${LOG_GROUP}, stream ${RUN_ID}/${INSTANCE_ID}/bootstrap"
	else
		log "warning: could not stream this log to CloudWatch Logs (it is still copied to ${RUN_URI}_bootstrap.log)"
	fi
}

check_gpu() {
	phase check-gpu
	command -v docker >/dev/null || fail "docker not found on the AMI"
	systemctl start docker
	docker info >/dev/null || fail "docker daemon is not running"
	start_log_stream
	command -v nvidia-smi >/dev/null ||
		fail "nvidia-smi not found: the AMI has no NVIDIA driver (ami_ssm_parameter must name a GPU Deep Learning AMI)"
	nvidia-smi || fail "nvidia-smi failed: no working NVIDIA GPU/driver on ${INSTANCE_TYPE}"
}

setup_scratch() { # SCRATCH: the instance store (NVMe) where the type has one, else a folder on the root volume
	phase scratch
	local devs=() target=$INSTANCE_STORE_MOUNT
	if mountpoint -q /opt/dlami/nvme; then # recent DLAMIs mount the instance store here themselves
		SCRATCH=/opt/dlami/nvme/vit-embed
	else
		mapfile -t devs < <(lsblk -dpno NAME,MODEL | awk '/Instance Storage/ {print $1}')
		if [ "${#devs[@]}" -eq 0 ]; then
			SCRATCH=$SCRATCH_FALLBACK
			log "no instance store on ${INSTANCE_TYPE}: scratch on the root volume"
		else
			local dev=${devs[0]}
			if [ "${#devs[@]}" -gt 1 ]; then
				mdadm --create /dev/md0 --run --level=0 --raid-devices="${#devs[@]}" "${devs[@]}"
				dev=/dev/md0
			fi
			mkfs.ext4 -q -F -E nodiscard "$dev"
			mkdir -p "$target"
			mount -o noatime "$dev" "$target"
			SCRATCH=$target/vit-embed
		fi
	fi
	install -d -m 0755 "$SCRATCH" "$SCRATCH/cache"
	chown "$APP_UID:$APP_UID" "$SCRATCH/cache" # the container's non-root user keeps downloaded weights here
	log "scratch: ${SCRATCH} ($(df -h --output=avail "$SCRATCH" | tail -1 | tr -d ' ') free)"
}

apt_daily_busy() { # Ubuntu's apt-daily(-upgrade) run on a first boot and hold apt's locks. They are oneshot units:
	# "activating" while they run, "inactive" (or "failed") once done; never "active", which is all `is-active` tests.
	local states
	states=$(systemctl is-active apt-daily.service apt-daily-upgrade.service 2>/dev/null || true)
	grep -qxE 'activating|deactivating|reloading' <<<"$states"
}

wait_for_apt_daily() { # let apt-daily(-upgrade) finish before the first apt-get (at most APT_DAILY_WAIT_S)
	local waited=0
	while apt_daily_busy; do
		if [ "$waited" -ge "$APT_DAILY_WAIT_S" ]; then
			log "apt-daily still runs after ${waited}s: trying apt anyway"
			return 0
		fi
		[ "$waited" -gt 0 ] || log "waiting for Ubuntu's apt-daily jobs to finish (they hold apt's locks on a first boot)"
		sleep 2
		waited=$((waited + 2))
	done
	[ "$waited" -eq 0 ] || log "apt-daily is done after ${waited}s"
}

apt_try() { # apt_try OUT PKG...: one apt-get update + install from Ubuntu's archive only, its output in OUT
	local out=$1 parts=$STATE_DIR/apt-sources.d list=/dev/null
	shift
	install -d -m 0755 "$parts"
	[ ! -e "$APT_UBUNTU_SOURCES" ] || cp "$APT_UBUNTU_SOURCES" "$parts/"
	[ ! -e "$APT_SOURCE_LIST" ] || list=$APT_SOURCE_LIST
	local only=(-o "Dir::Etc::sourcelist=${list}" -o "Dir::Etc::sourceparts=${parts}" -o APT::Get::List-Cleanup=0
		-o DPkg::Lock::Timeout=120 -o Acquire::Retries=3)
	apt-get "${only[@]}" update -q >"$out" 2>&1 &&
		DEBIAN_FRONTEND=noninteractive apt-get "${only[@]}" install -y -q --no-install-recommends "$@" >"$out" 2>&1
}

apt_install() { # apt_install PKG...: retried with backoff; returns 1 with apt's first error in MOUNT_ERROR
	local attempt=1 pause=$APT_RETRY_S out why started
	out=$(mktemp -p "$STATE_DIR")
	started=$(date +%s)
	wait_for_apt_daily
	until apt_try "$out" "$@"; do
		why=$(grep -m1 -E '^(E|Err):' "$out" || true) # apt's first error is the cause (the lists lock, say)
		[ -n "$why" ] || why=$(tail -1 "$out")
		if [ "$attempt" -ge "$APT_ATTEMPTS" ]; then
			MOUNT_ERROR="could not install $* with apt-get after ${attempt} attempts in $(($(date +%s) - started))s: ${why}"
			log "$MOUNT_ERROR"
			return 1
		fi
		log "apt-get failed (attempt ${attempt}/${APT_ATTEMPTS}): ${why}; retrying in ${pause}s"
		sleep "$pause"
		attempt=$((attempt + 1))
		pause=$((pause * 2))
	done
	log "installed $* (attempt ${attempt}/${APT_ATTEMPTS})"
}

s3fs_installed() {
	# shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not a shell variable
	[ "$(dpkg-query -W -f='${Status}' s3fs 2>/dev/null)" = "install ok installed" ]
}

s3fs_mount() { # the public nuScenes bucket, read-only, at NUSCENES_MOUNT; returns 1 with the reason in MOUNT_ERROR
	s3fs_installed || apt_install s3fs || return 1
	mkdir -p "$NUSCENES_MOUNT"
	# s3fs stages every object it reads in a temporary file (its tmpdir, /tmp by default; use_cache or not): up to
	# four archives at once for the job, ~17 GB of keyframes or ~124 GB of *_blobs. On the instance store, not the
	# root volume (gp3 at 125 MB/s baseline, shared with the image and the logs).
	local tmp=$SCRATCH/s3fs extra=() attempt err=$STATE_DIR/s3fs.err
	install -d -m 0700 "$tmp"
	[ -z "$S3FS_EXTRA_OPTIONS" ] || extra=(-o "$S3FS_EXTRA_OPTIONS")
	for ((attempt = 1; attempt <= S3FS_ATTEMPTS; attempt++)); do
		if s3fs "$NUSCENES_BUCKET" "$NUSCENES_MOUNT" \
			-o ro -o public_bucket=1 -o allow_other -o umask=0022 \
			-o "url=${NUSCENES_S3_URL}" -o "endpoint=${NUSCENES_REGION}" \
			-o "tmpdir=${tmp}" -o "ensure_diskfree=${S3FS_DISKFREE_MB}" "${extra[@]}" 2>"$err" &&
			mountpoint -q "$NUSCENES_MOUNT"; then
			log "mounted s3://${NUSCENES_BUCKET} read-only at ${NUSCENES_MOUNT} (s3fs stages its reads in ${tmp})"
			return 0
		fi
		log "s3fs could not mount s3://${NUSCENES_BUCKET} (attempt ${attempt}/${S3FS_ATTEMPTS}): $(tr '\n' ' ' <"$err")"
		sleep "$attempt"
	done
	MOUNT_ERROR="s3fs did not mount s3://${NUSCENES_BUCKET} at ${NUSCENES_MOUNT} after ${S3FS_ATTEMPTS} attempts: $(tr '\n' ' ' <"$err")"
	return 1
}

read_s3_directly() { # the job reads the bucket straight from S3 (the job's own reader): mount paths become s3:// URIs
	local direct=$STATE_DIR/job.args arg
	while IFS= read -r arg; do
		[[ "$arg" != "$NUSCENES_MOUNT"/* ]] || arg="s3://${NUSCENES_BUCKET}/${arg#"$NUSCENES_MOUNT"/}"
		printf '%s\n' "$arg"
	done <"$JOB_ARGS_FILE" >"$direct"
	JOB_ARGS_FILE=$direct
	DATA_SOURCE="S3 directly (s3://${NUSCENES_BUCKET}); the s3fs mount failed: ${MOUNT_ERROR}"
	log "the job reads s3://${NUSCENES_BUCKET} directly: ${MOUNT_ERROR}"
}

mount_nuscenes() { # the s3fs mount first (the brief's choice); S3 directly when s3fs cannot be installed or mounted
	phase mount
	if ! s3fs_mount; then
		read_s3_directly
		write_status running "" # _STATUS says which way the data comes
		return 0
	fi
	DATA_SOURCE="s3fs mount of s3://${NUSCENES_BUCKET} at ${NUSCENES_MOUNT}"
	write_status running ""
	local arg prev=
	while IFS= read -r arg; do # every plain path the job will read must be there
		if [[ "$prev" =~ ^--(source|nuscenes-meta)$ && "$arg" == "$NUSCENES_MOUNT"/* && "$arg" != *[*?[]* ]]; then
			[ -e "$arg" ] || fail "source ${arg} not found on the s3fs mount of s3://${NUSCENES_BUCKET}"
		fi
		prev=$arg
	done <"$JOB_ARGS_FILE"
}

prepare_image() {
	phase image
	if [ -n "$IMAGE" ]; then
		if [ -n "$ECR_REGISTRY" ]; then
			aws ecr get-login-password --region "$ECR_REGION" |
				docker login --username AWS --password-stdin "$ECR_REGISTRY"
		fi
		docker pull "$IMAGE"
		JOB_IMAGE=$IMAGE
	else
		[ -s "$SOURCE_ZIP" ] || fail "job source ${SOURCE_ZIP} is missing"
		local src=$WORK_DIR/src
		rm -rf "$src"
		mkdir -p "$src"
		python3 -m zipfile -e "$SOURCE_ZIP" "$src"
		JOB_IMAGE="vit-embed:${RUN_ID}"
		log "building ${JOB_IMAGE} from docker/Dockerfile (several minutes)"
		DOCKER_BUILDKIT=1 docker build --pull -f "$src/docker/Dockerfile" -t "$JOB_IMAGE" "$src"
	fi
	docker run --rm --gpus all --entrypoint nvidia-smi "$JOB_IMAGE" -L ||
		fail "the GPU is not visible inside the container (NVIDIA Container Toolkit)"
}

run_job() { # python -m job run, writing straight to the run prefix; stopped gracefully at the deadline
	phase weights # the container's first steps: open the sources, load the weights (from WEIGHTS_CACHE once stored)
	local remaining rc=0 deadline_pid job_args=() extra=()
	remaining=$((DEADLINE_EPOCH - $(date +%s) - STOP_MARGIN_S))
	[ "$remaining" -gt "$MIN_JOB_S" ] || fail "max_run_hours (${MAX_RUN_MINUTES} min) reached before the job could start"
	mapfile -t job_args <"$JOB_ARGS_FILE"
	[ -z "$WEIGHTS_CACHE" ] || extra=(--weights-cache "$WEIGHTS_CACHE")
	log "python -m job run ${job_args[*]} --out ${RUN_URI} ${extra[*]} (stopped in ${remaining}s at the latest)"
	touch "$STATE_DIR/job-started"
	# --init: tini is PID 1 and hands SIGTERM to python, which commits and exits 75; --stop-timeout: the grace period
	# docker itself gives it at a shutdown. The output goes to CloudWatch (awslogs) and to JOB_LOG (attached).
	docker run --rm --init --name "$CONTAINER" --stop-timeout "$STOP_GRACE_S" --gpus all --ipc=host \
		--log-driver=awslogs \
		--log-opt "awslogs-region=${REGION}" \
		--log-opt "awslogs-group=${LOG_GROUP}" \
		--log-opt "awslogs-stream=${RUN_ID}/${INSTANCE_ID}/job" \
		-e "AWS_REGION=${REGION}" -e "AWS_DEFAULT_REGION=${REGION}" \
		-v "${NUSCENES_MOUNT}:${NUSCENES_MOUNT}:ro" \
		-v "${SCRATCH}/cache:/data/cache" \
		"$JOB_IMAGE" run "${job_args[@]}" --out "$RUN_URI" "${extra[@]}" --no-progress \
		>"$JOB_LOG" 2>&1 &
	JOB_PID=$!
	stop_at_deadline "$(($(date +%s) + remaining))" &
	deadline_pid=$!
	WATCHERS+=("$deadline_pid")
	wait "$JOB_PID" || rc=$?
	JOB_PID=
	kill "$deadline_pid" 2>/dev/null || true
	log "the job exited with code ${rc}"
	[ "$rc" -ne 0 ] || return 0
	if [ ! -s "$STOP_FILE" ] && [ "$rc" -eq "$EXIT_INTERRUPTED" ] && [ -n "$(lease_holder)" ]; then
		# the job found another live writer on the run (exit 75 "come back later", job.lease): wait for it, then again
		log "the job found the run held by another writer"
		wait_for_writer
		if run_complete; then
			return 0
		fi
		run_job
		return 0
	fi
	if [ -s "$STOP_FILE" ] || [ "$rc" -eq "$EXIT_INTERRUPTED" ]; then
		exit "$EXIT_INTERRUPTED" # the EXIT trap records why (the stop reason, or the job's own)
	fi
	fail "the job exited with code ${rc}; see CloudWatch Logs ${LOG_GROUP}, stream ${RUN_ID}/${INSTANCE_ID}/job"
}

publish() { # the run is complete once its manifest is there; the EXIT trap copies the logs next to it
	phase publish
	aws s3 ls "${RUN_URI}manifest.json" --region "$REGION" >/dev/null ||
		fail "the job exited 0 but ${RUN_URI}manifest.json is missing"
}

run_complete() { # the run's manifest is there: nothing (more) to do
	if aws s3 ls "${RUN_URI}manifest.json" --region "$REGION" >/dev/null 2>&1; then
		log "${RUN_URI}manifest.json exists: the run is complete, nothing to do"
		return 0
	fi
	return 1
}

main() {
	INSTANCE_ID=$(imds instance-id || echo unknown)
	INSTANCE_TYPE=$(imds instance-type || echo "$INSTANCE_TYPE") # the group picked one of the allowed types
	ATTEMPT="${ATTEMPT}-${INSTANCE_ID}"
	log "run ${RUN_ID} on ${INSTANCE_ID} (${INSTANCE_TYPE}, ${MARKET}); artifacts: ${RUN_URI}"
	if run_complete; then
		exit 0
	fi
	WAITING_ONLY=true # until it is our turn, the ending must not write this run's _STATUS
	wait_for_writer
	WAITING_ONLY=false
	if run_complete; then
		exit 0
	fi
	schedule_hard_stop
	if [ "$MARKET" = spot ]; then
		watch_spot_interruption &
		WATCHERS+=("$!")
	fi
	check_gpu
	setup_scratch
	mount_nuscenes
	prepare_image
	run_job
	publish
}

main
