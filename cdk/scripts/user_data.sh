#!/usr/bin/env bash
# Runs the embedding job once on a fresh Deep Learning AMI instance, then powers the instance off.
#
# Shipped as a CDK asset; the user-data CDK renders writes RUN_ENV_FILE and JOB_ARGS_FILE, schedules the hard stop
# (shutdown -h +N) and then calls:  user_data.sh RUN_ENV_FILE JOB_ARGS_FILE
#
# Steps: check the GPU (nvidia-smi) -> instance store as scratch -> s3fs mount of the nuScenes bucket (read-only)
# -> build the job image from the shipped source (or pull IMAGE) -> docker run python -m job run (logs to CloudWatch)
# -> check manifest.json -> _STATUS -> power off. _STATUS in s3://<bucket>/runs/<run-id>/ says running / succeeded /
# failed with the reason; the EXIT trap writes the final one and powers off on success and on failure alike.
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
KEEP_INSTANCE=${KEEP_INSTANCE:-false} # debugging only: set in RUN_ENV_FILE to skip the final power-off
ASG_NAME=${ASG_NAME:-} # the run's Auto Scaling group (cdk/compute.py); empty outside one
# Where things go on the instance (overridable so tests can run the script in a sandbox with stub commands).
LOG_FILE=${LOG_FILE:-/var/log/vit-embed.log}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
WORK_DIR=${WORK_DIR:-/opt/vit-embed}
SCRATCH_FALLBACK=${SCRATCH_FALLBACK:-/var/lib/vit-embed}
INSTANCE_STORE_MOUNT=${INSTANCE_STORE_MOUNT:-/mnt/scratch}

readonly RUN_URI="s3://${ARTIFACTS_BUCKET}/${RUN_PREFIX}"
readonly CONTAINER=vit-embed
readonly APP_UID=1000 # the non-root user in docker/Dockerfile
readonly STOP_MARGIN_S=300 # leave this long before the deadline to write _STATUS and the log
PHASE=starting
FAIL_REASON=
JOB_IMAGE=
SCRATCH=
INSTANCE_ID=unknown
STARTED_AT=$(date -u +%FT%TZ)

exec > >(tee -a "$LOG_FILE") 2>&1

log() { printf '%s vit-embed[%s]: %s\n' "$(date -u +%FT%TZ)" "$PHASE" "$*"; }

fail() {
	FAIL_REASON=$*
	log "FAILED: $*"
	exit 1
}

imds() { # imds PATH: GET an instance-metadata path with an IMDSv2 token
	local token
	token=$(curl -fsS -m 5 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
	curl -fsS -m 5 -H "X-aws-ec2-metadata-token: ${token}" "http://169.254.169.254/latest/meta-data/$1"
}

status_json() { # status_json STATUS REASON: the _STATUS document
	python3 -c 'import json, sys
keys = ("status", "reason", "phase", "run_id", "run_uri", "instance_id", "instance_type", "started_at", "updated_at")
print(json.dumps(dict(zip(keys, sys.argv[1:])), indent=1))' \
		"$1" "$2" "$PHASE" "$RUN_ID" "$RUN_URI" "$INSTANCE_ID" "$INSTANCE_TYPE" "$STARTED_AT" "$(date -u +%FT%TZ)"
}

write_status() { # write_status running|succeeded|failed [REASON]
	status_json "$1" "${2:-}" |
		aws s3 cp - "${RUN_URI}_STATUS" --region "$REGION" --content-type application/json --only-show-errors ||
		log "warning: could not write ${RUN_URI}_STATUS"
}

upload_log() {
	aws s3 cp "$LOG_FILE" "${RUN_URI}_bootstrap.log" --region "$REGION" --content-type text/plain --only-show-errors ||
		log "warning: could not upload ${LOG_FILE}"
}

on_err() { # remember the first failing command as the reason
	local rc=$1 line=$2 cmd=$3
	[ -n "$FAIL_REASON" ] || FAIL_REASON="exit ${rc} at line ${line} (${PHASE}): ${cmd}"
}

# --- capacity (Auto Scaling group) ------------------------------------------------------------------------------
# The instance runs in a group of at most one (cdk/compute.py). Before it powers off, it sets the group to
# min = max = desired = 0, or the group would replace it and start the run again. The deadline schedule outside the
# instance (cdk/deadline.py) makes the same call at max_run_hours + margin if this one never happens.
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

on_exit() {
	local rc=$?
	trap - EXIT ERR
	set +e
	if [ "$rc" -eq 0 ]; then
		log "run succeeded: ${RUN_URI}"
		write_status succeeded ""
	else
		log "run failed (exit ${rc}): ${FAIL_REASON:-unknown}"
		write_status failed "${FAIL_REASON:-exit ${rc} in phase ${PHASE}}"
	fi
	upload_log
	if [ "$KEEP_INSTANCE" = true ]; then
		log "KEEP_INSTANCE=true: not powering off (the hard stop at max_run_hours still applies)"
		return
	fi
	release_capacity
	log "powering off (the instance terminates)"
	sync
	shutdown -h now "vit-embed: run finished"
}

on_signal() {
	[ -n "$FAIL_REASON" ] || FAIL_REASON="terminated by a signal during ${PHASE}"
	exit 143
}

trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT
trap on_signal TERM INT HUP

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

watch_spot_interruption() { # background: record a spot reclaim in _STATUS before the instance goes away
	local action
	while sleep 5; do
		if action=$(imds spot/instance-action 2>/dev/null); then
			PHASE=interrupted
			log "spot interruption notice: ${action}"
			write_status failed "spot interruption: ${action}"
			upload_log
			return 0
		fi
	done
}

check_gpu() {
	PHASE=check-gpu
	command -v nvidia-smi >/dev/null ||
		fail "nvidia-smi not found: the AMI has no NVIDIA driver (ami_ssm_parameter must name a GPU Deep Learning AMI)"
	nvidia-smi || fail "nvidia-smi failed: no working NVIDIA GPU/driver on ${INSTANCE_TYPE}"
	command -v docker >/dev/null || fail "docker not found on the AMI"
	systemctl start docker
	docker info >/dev/null || fail "docker daemon is not running"
}

setup_scratch() { # SCRATCH: the instance store (NVMe) where the type has one, else a folder on the root volume
	PHASE=scratch
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
	install -d -m 0755 "$SCRATCH" "$SCRATCH/out" "$SCRATCH/cache"
	chown "$APP_UID:$APP_UID" "$SCRATCH/out" "$SCRATCH/cache" # the container's non-root user writes here
	log "scratch: ${SCRATCH} ($(df -h --output=avail "$SCRATCH" | tail -1 | tr -d ' ') free)"
}

mount_nuscenes() { # the public nuScenes bucket, read-only, at NUSCENES_MOUNT (its regional endpoint)
	PHASE=mount
	if ! command -v s3fs >/dev/null; then
		apt-get -o DPkg::Lock::Timeout=600 update -q
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q s3fs
	fi
	mkdir -p "$NUSCENES_MOUNT"
	s3fs "$NUSCENES_BUCKET" "$NUSCENES_MOUNT" \
		-o ro -o public_bucket=1 -o allow_other -o umask=0022 \
		-o "url=https://s3.${NUSCENES_REGION}.amazonaws.com" -o "endpoint=${NUSCENES_REGION}"
	mountpoint -q "$NUSCENES_MOUNT" || fail "s3fs did not mount s3://${NUSCENES_BUCKET} at ${NUSCENES_MOUNT}"
	local arg prev=
	while IFS= read -r arg; do # every plain path the job will read must be there
		if [[ "$prev" =~ ^--(source|nuscenes-meta)$ && "$arg" == "$NUSCENES_MOUNT"/* && "$arg" != *[*?[]* ]]; then
			[ -e "$arg" ] || fail "source ${arg} not found on the s3fs mount of s3://${NUSCENES_BUCKET}"
		fi
		prev=$arg
	done <"$JOB_ARGS_FILE"
	log "mounted s3://${NUSCENES_BUCKET} read-only at ${NUSCENES_MOUNT}"
}

prepare_image() {
	PHASE=image
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

run_job() {
	PHASE=job
	local remaining rc job_args=()
	remaining=$((DEADLINE_EPOCH - $(date +%s) - STOP_MARGIN_S))
	[ "$remaining" -gt 60 ] || fail "max_run_hours reached before the job could start"
	mapfile -t job_args <"$JOB_ARGS_FILE"
	write_status running ""
	log "python -m job run ${job_args[*]} --out /data/out --publish ${RUN_URI} (up to ${remaining}s)"
	set +e
	timeout --kill-after=60 "$remaining" docker run --rm --name "$CONTAINER" --gpus all --ipc=host \
		--log-driver=awslogs \
		--log-opt "awslogs-region=${REGION}" \
		--log-opt "awslogs-group=${LOG_GROUP}" \
		--log-opt "awslogs-stream=${RUN_ID}/job" \
		-e "AWS_REGION=${REGION}" -e "AWS_DEFAULT_REGION=${REGION}" \
		-v "${NUSCENES_MOUNT}:${NUSCENES_MOUNT}:ro" \
		-v "${SCRATCH}/out:/data/out" \
		-v "${SCRATCH}/cache:/data/cache" \
		"$JOB_IMAGE" run "${job_args[@]}" --out /data/out --publish "$RUN_URI" --device cuda
	rc=$?
	set -e
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		docker stop -t 30 "$CONTAINER" >/dev/null 2>&1 || true
		fail "max_run_hours (${MAX_RUN_MINUTES} min) reached: the job was stopped before it finished"
	fi
	[ "$rc" -eq 0 ] || fail "the job exited with code ${rc}; see CloudWatch Logs ${LOG_GROUP}, stream ${RUN_ID}/job"
	aws s3 ls "${RUN_URI}manifest.json" --region "$REGION" >/dev/null ||
		fail "the job exited 0 but ${RUN_URI}manifest.json is missing (publish did not finish)"
}

main() {
	INSTANCE_ID=$(imds instance-id || echo unknown)
	INSTANCE_TYPE=$(imds instance-type || echo "$INSTANCE_TYPE") # the group picked one of the allowed types
	log "run ${RUN_ID} on ${INSTANCE_ID} (${INSTANCE_TYPE}, ${MARKET}); artifacts: ${RUN_URI}"
	write_status running ""
	schedule_hard_stop
	if [ "$MARKET" = spot ]; then
		watch_spot_interruption &
	fi
	check_gpu
	setup_scratch
	mount_nuscenes
	prepare_image
	run_job
	PHASE=finished
}

main
