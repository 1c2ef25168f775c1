import math

import numpy as np
import pytest
import torch

from selfsup.vision.losses import DINOLoss, InfoNCEWithQueue, MemoryQueue, NegativeCosineLoss, NTXentLoss


def ntxent_numpy(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """Independent reference: SimCLR's loss written out per anchor with explicit loops (float64)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, batch = len(z), len(z1)
    total = 0.0
    for i in range(n):
        j = (i + batch) % n
        denominator = sum(math.exp(z[i] @ z[k] / temperature) for k in range(n) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / temperature) / denominator)
    return total / n


@pytest.mark.parametrize("batch,dim,temperature", [(2, 3, 0.5), (8, 16, 0.2), (5, 4, 1.0)])
def test_ntxent_matches_numpy_reference(batch, dim, temperature):
    rng = np.random.default_rng(batch * 100 + dim)
    z1, z2 = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    got = NTXentLoss(temperature)(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32))
    assert float(got) == pytest.approx(ntxent_numpy(z1, z2, temperature), rel=1e-5)


def test_ntxent_known_value_for_identical_orthogonal_views():
    batch, temperature = 4, 0.5
    z = torch.eye(batch, 8) * 3.0  # orthogonal images; the scale must not matter (cosine)
    expected = math.log(1 + (2 * batch - 2) * math.exp(-1 / temperature))
    assert float(NTXentLoss(temperature)(z, z.clone())) == pytest.approx(expected, rel=1e-5)
    # swapping the views of two images makes the positives the worst pairs: the loss must go up
    assert float(NTXentLoss(temperature)(z, z[[1, 0, 2, 3]])) > expected + 0.5


def test_ntxent_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        NTXentLoss()(torch.ones(1, 3), torch.ones(1, 3))


def test_queue_enqueues_fifo_and_wraps_around():
    queue = MemoryQueue(size=6, dim=2)
    first = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    queue.enqueue(first)
    assert torch.allclose(queue.keys[:2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # stored L2-normalised
    assert int(queue.pointer) == 2
    queue.enqueue(torch.tensor([[3.0, 0.0], [3.0, 0.0]]))
    queue.enqueue(torch.tensor([[0.0, -1.0], [0.0, -1.0]]))
    assert int(queue.pointer) == 0
    queue.enqueue(torch.tensor([[-1.0, 0.0], [-1.0, 0.0]]))  # the oldest keys (first batch) are dequeued
    assert torch.equal(queue.keys[:2], torch.tensor([[-1.0, 0.0], [-1.0, 0.0]]))
    assert torch.equal(queue.keys[2:4], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="% B == 0"):
        queue.enqueue(torch.ones(4, 2))


def test_infonce_with_queue_prefers_the_positive_and_stops_key_gradients():
    queries = torch.eye(4, 8).requires_grad_()
    keys = torch.eye(4, 8).requires_grad_()
    far_queue = -torch.eye(8)[:6]  # negatives pointing away from every query
    loss_fn = InfoNCEWithQueue(0.1)
    good = loss_fn(queries, keys, far_queue)
    bad = loss_fn(queries, keys[[1, 0, 3, 2]], far_queue)
    assert float(good.detach()) < 0.01 < float(bad.detach())
    good.backward()
    assert queries.grad is not None and keys.grad is None


def test_negative_cosine_stops_the_target_gradient():
    prediction = torch.randn(5, 4, requires_grad=True)
    target = torch.randn(5, 4, requires_grad=True)
    loss = NegativeCosineLoss()(prediction, target)
    loss.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert target.grad is None, "the target branch must receive no gradient (stop-gradient)"
    assert float(NegativeCosineLoss()(target, target).detach()) == pytest.approx(-1.0, abs=1e-6)


def test_dino_center_is_an_ema_of_teacher_outputs_and_teacher_is_sharper():
    loss_fn = DINOLoss(out_dim=3, teacher_temperature=0.04, student_temperature=0.1, center_momentum=0.9)
    teacher = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 4.0]]])  # [2, 2, 3]
    loss_fn.update_center(teacher)
    batch_mean = teacher.reshape(-1, 3).mean(dim=0)
    assert torch.allclose(loss_fn.center[0], 0.1 * batch_mean)
    loss_fn.update_center(teacher)
    assert torch.allclose(loss_fn.center[0], 0.9 * 0.1 * batch_mean + 0.1 * batch_mean)
    # centering: a prototype the teacher always favours is pulled back towards the others
    always_first = torch.tensor([[[5.0, 0.0, 0.0]] * 4])
    centred = DINOLoss(3, center_momentum=0.0)
    before = centred.teacher_probabilities(always_first)[0, 0, 0]
    centred.update_center(always_first)
    after = centred.teacher_probabilities(always_first)[0, 0, 0]
    assert after < before and torch.allclose(centred.teacher_probabilities(always_first), torch.full((1, 4, 3), 1 / 3))
    # sharpening: the teacher's distribution has lower entropy than the student's for the same logits
    logits = torch.tensor([[[0.3, 0.1, -0.2]]])
    p_teacher = DINOLoss(3).teacher_probabilities(logits)
    p_student = torch.softmax(logits / 0.1, dim=-1)
    entropy = lambda p: float(-(p * p.log()).sum())  # noqa: E731
    assert entropy(p_teacher) < entropy(p_student)


def test_dino_loss_compares_only_different_views_and_gives_student_gradients():
    torch.manual_seed(0)
    student = torch.randn(2, 4, 6, requires_grad=True)
    teacher = torch.randn(2, 4, 6, requires_grad=True)
    loss_fn = DINOLoss(6)
    loss = loss_fn(student, teacher)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    # the loss is the mean of the two cross-view pairs (teacher 0 -> student 1, teacher 1 -> student 0), written out
    targets = loss_fn.teacher_probabilities(teacher)
    log_student = torch.log_softmax(student.detach() / 0.1, dim=-1)

    def pair(t, s):
        return float((-targets[t] * log_student[s]).sum(dim=-1).mean())

    value = float(loss.detach())
    assert value == pytest.approx((pair(0, 1) + pair(1, 0)) / 2, rel=1e-6)
    assert value != pytest.approx((pair(0, 0) + pair(0, 1) + pair(1, 0) + pair(1, 1)) / 4, rel=1e-3)
    # view 0 of the teacher only teaches view 1 of the student: changing teacher view 0 cannot change the gradient
    # on student view 0 (taught by teacher view 1 alone), and does change the one on student view 1
    first_grad = student.grad.clone()
    other_teacher = teacher.detach().clone()
    other_teacher[0] = torch.randn(4, 6) * 3
    student.grad = None
    loss_fn(student, other_teacher).backward()
    assert torch.equal(student.grad[0], first_grad[0])
    assert not torch.allclose(student.grad[1], first_grad[1])
    # multi-crop: 3 student views, the first 2 also seen by the teacher -> pairs (0,1), (0,2), (1,0), (1,2)
    crops = torch.randn(3, 4, 6)
    log_crops = torch.log_softmax(crops / 0.1, dim=-1)
    expected = sum(float((-targets[t] * log_crops[s]).sum(dim=-1).mean()) for t, s in ((0, 1), (0, 2), (1, 0), (1, 2)))
    assert float(loss_fn(crops, teacher)) == pytest.approx(expected / 4, rel=1e-6)
    with pytest.raises(ValueError, match="prototypes"):
        DINOLoss(5)(student, teacher)
