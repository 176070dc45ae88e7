/* The compiled floor of `state_intake.py`: the subscriber's work done in C on rcl, no Python.
 *
 * Three subscriptions (/ee_pose and /target_pose as geometry_msgs/PoseStamped, /joint_states as
 * sensor_msgs/JointState; RELIABLE keep-last 100, the suite's STATE_QOS), one wait set kept,
 * every waiting message taken as serialized bytes, and each joint state answered with one
 * prepared serialized std_msgs/Float64MultiArray of 7 zeros on /bench/command: what the Python
 * variants do, with nothing between the middleware and the loop. Built by state_intake.py into
 * a shared library and called through ctypes from a process that has loaded rclpy (so that the
 * same ROS libraries, Fast DDS and environment are used); the call holds no Python lock.
 *
 * With a callback (`got`, not NULL) it is called with each message's bytes: state_intake.py
 * passes a Python function (ctypes), the loop in C and the message in Python, to show what
 * taking messages without rclpy's executor would leave a Python node to pay.
 *
 * intake_floor(warmup, seconds, &cpu, &wall, &messages, got): from the first message, `warmup` s,
 * then a window of `seconds` s; the process's CPU time (user + system) and the messages taken
 * over the window. Returns 0, or 1 after printing the error to stderr (an rcl call failed, or
 * no message came in 30 s).
 */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <rcl/error_handling.h>
#include <rcl/rcl.h>
#include <rmw/serialized_message.h>
#include <rosidl_runtime_c/message_type_support_struct.h>
#include <geometry_msgs/msg/pose_stamped.h>
#include <sensor_msgs/msg/joint_state.h>
#include <std_msgs/msg/float64_multi_array.h>

#define TRY(call) do { if ((call) != RCL_RET_OK) { \
    fprintf(stderr, "intake_floor: %s: %s\n", #call, rcl_get_error_string().str); \
    return 1; } } while (0)

/* a call whose result does not matter any more (tearing down) */
#define QUIET(call) do { int ignored_ = (int)(call); (void)ignored_; } while (0)

static double wall_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu_now(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec * 1e-6;
}

/* called for each message taken, with the subscription's index and the serialized bytes */
typedef void (*intake_callback)(int topic, const unsigned char *data, size_t length);

int intake_floor(double warmup, double seconds, double *cpu, double *wall, long *messages,
                 intake_callback got) {
  rcl_allocator_t alloc = rcl_get_default_allocator();
  rcl_init_options_t init_options = rcl_get_zero_initialized_init_options();
  TRY(rcl_init_options_init(&init_options, alloc));
  rcl_context_t context = rcl_get_zero_initialized_context();
  TRY(rcl_init(0, NULL, &init_options, &context));
  rcl_node_t node = rcl_get_zero_initialized_node();
  rcl_node_options_t node_options = rcl_node_get_default_options();
  TRY(rcl_node_init(&node, "state_intake_subscriber", "", &context, &node_options));

  rmw_qos_profile_t qos = rmw_qos_profile_default;
  qos.history = RMW_QOS_POLICY_HISTORY_KEEP_LAST;
  qos.depth = 100;
  qos.reliability = RMW_QOS_POLICY_RELIABILITY_RELIABLE;
  const char *topics[3] = {"/ee_pose", "/target_pose", "/joint_states"};
  const rosidl_message_type_support_t *types[3] = {
      ROSIDL_GET_MSG_TYPE_SUPPORT(geometry_msgs, msg, PoseStamped),
      ROSIDL_GET_MSG_TYPE_SUPPORT(geometry_msgs, msg, PoseStamped),
      ROSIDL_GET_MSG_TYPE_SUPPORT(sensor_msgs, msg, JointState)};
  rcl_subscription_t subs[3];
  for (int i = 0; i < 3; i++) {
    subs[i] = rcl_get_zero_initialized_subscription();
    rcl_subscription_options_t options = rcl_subscription_get_default_options();
    options.qos = qos;
    TRY(rcl_subscription_init(&subs[i], &node, types[i], topics[i], &options));
  }
  rcl_publisher_t command = rcl_get_zero_initialized_publisher();
  rcl_publisher_options_t pub_options = rcl_publisher_get_default_options();
  pub_options.qos = qos;
  TRY(rcl_publisher_init(&command, &node,
                         ROSIDL_GET_MSG_TYPE_SUPPORT(std_msgs, msg, Float64MultiArray),
                         "/bench/command", &pub_options));

  /* the answer's CDR bytes: encapsulation, no dimension, data_offset 0, 7 doubles (aligned to
     8 after the header) of zero */
  rcl_serialized_message_t answer = rmw_get_zero_initialized_serialized_message();
  TRY(rmw_serialized_message_init(&answer, 80, &alloc));
  static const unsigned char head[16] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0};
  memset(answer.buffer, 0, 76);
  memcpy(answer.buffer, head, sizeof head);
  answer.buffer_length = 76;

  rcl_serialized_message_t taken = rmw_get_zero_initialized_serialized_message();
  TRY(rmw_serialized_message_init(&taken, 1024, &alloc));
  rcl_wait_set_t wait_set = rcl_get_zero_initialized_wait_set();
  TRY(rcl_wait_set_init(&wait_set, 3, 0, 0, 0, 0, 0, &context, alloc));

  long count = 0, count0 = 0;
  double first = 0.0, start = 0.0, cpu0 = 0.0, begin = wall_now();
  for (;;) {
    TRY(rcl_wait_set_clear(&wait_set));
    for (int i = 0; i < 3; i++) TRY(rcl_wait_set_add_subscription(&wait_set, &subs[i], NULL));
    rcl_ret_t ret = rcl_wait(&wait_set, RCL_MS_TO_NS(100));
    if (ret != RCL_RET_OK && ret != RCL_RET_TIMEOUT) TRY(ret);
    for (int i = 0; i < 3; i++) {
      if (!wait_set.subscriptions[i]) continue;
      rmw_message_info_t info;
      while (rcl_take_serialized_message(&subs[i], &taken, &info, NULL) == RCL_RET_OK) {
        count++;
        if (got) got(i, taken.buffer, taken.buffer_length);
        if (i == 2) TRY(rcl_publish_serialized_message(&command, &answer, NULL));
      }
    }
    double t = wall_now();
    if (count && first == 0.0) first = t;
    if (first == 0.0 && t - begin > 30.0) {
      fprintf(stderr, "intake_floor: no state message in 30 s\n");
      return 1;
    }
    if (first != 0.0 && start == 0.0 && t - first >= warmup) {
      start = t;
      cpu0 = cpu_now();
      count0 = count;
    }
    if (start != 0.0 && t - start >= seconds) {
      *cpu = cpu_now() - cpu0;
      *wall = t - start;
      *messages = count - count0;
      break;
    }
  }
  QUIET(rcl_wait_set_fini(&wait_set));
  QUIET(rmw_serialized_message_fini(&taken));
  QUIET(rmw_serialized_message_fini(&answer));
  QUIET(rcl_publisher_fini(&command, &node));
  for (int i = 0; i < 3; i++) QUIET(rcl_subscription_fini(&subs[i], &node));
  QUIET(rcl_node_fini(&node));
  QUIET(rcl_shutdown(&context));
  QUIET(rcl_context_fini(&context));
  QUIET(rcl_init_options_fini(&init_options));
  return 0;
}
