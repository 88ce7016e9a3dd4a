"""Feedback gateway: gRPC in (FeedbackService), Kafka (rlhf.feedback.v1) out."""
