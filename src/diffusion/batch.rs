//! Several requests denoised in one UNet batch.
//!
//! Requests that share size, steps and guidance scale run the same schedule, so their
//! latents can go through the UNet together. Each request keeps its own noise stream (seeded
//! by its own seed, drawn in the order [`Pipeline::generate`] draws it) and its own text
//! conditioning, so a request's images do not depend on what it was batched with. A
//! request cancelled between steps leaves the batch before the next step.

use super::pipeline::{Conditioning, GeneratedImages, ImageRequest, Pipeline};
use super::unet::TextTime;
use crate::backend::image_ops::ImageOps;
use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What requests must share to be denoised in one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchKey {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// The guidance scale's bits: equal scales only.
    pub guidance_bits: u32,
}

impl BatchKey {
    pub fn of(req: &ImageRequest) -> BatchKey {
        BatchKey {
            width: req.width,
            height: req.height,
            steps: req.steps,
            guidance_bits: req.guidance_scale.to_bits(),
        }
    }
}

/// One request's state inside a batch.
struct Member<T> {
    images: usize,
    cond: Conditioning<T>,
    latents: T,
    rng: ChaCha8Rng,
    dims: [usize; 4],
}

/// `dims`' worth of standard-normal values from `rng`.
fn normal(rng: &mut ChaCha8Rng, dims: &[usize; 4]) -> Vec<f32> {
    let count = dims.iter().product();
    (0..count).map(|_| StandardNormal.sample(rng)).collect()
}

/// The whole batch's UNet conditioning, rebuilt whenever members leave.
struct BatchConditioning<T> {
    context: T,
    text_embeds: Option<T>,
    time_ids: Vec<f32>,
}

/// Runs `requests` (which must share one [`BatchKey`]) as one batch. `cancelled(i)` is asked
/// before every step for each request still running; a request it is true for is dropped
/// and gets `None`. The others get their images, as [`Pipeline::generate`] would make them.
pub fn generate_batch<B: ImageOps>(
    pipeline: &Pipeline<B>,
    requests: &[&ImageRequest],
    cancelled: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Option<GeneratedImages>>> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    let key = BatchKey::of(first);
    anyhow::ensure!(
        requests.iter().all(|r| BatchKey::of(r) == key),
        "requests of one batch must share size, steps and guidance scale"
    );
    for req in requests {
        pipeline.validate(req)?;
        anyhow::ensure!(
            req.initial_latents.is_none(),
            "batched requests draw their own initial latents"
        );
    }
    let be = pipeline.backend();
    let schedule = pipeline.scheduler_config().build(first.steps)?;
    let guided = first.guidance_scale > 1.0;
    let mut members = Vec::with_capacity(requests.len());
    for req in requests {
        let dims = pipeline.latent_dims(req);
        let mut rng = ChaCha8Rng::seed_from_u64(req.seed);
        let initial = be.tensor_from_f32(normal(&mut rng, &dims), &dims, pipeline.dtype())?;
        members.push(Some(Member {
            images: req.num_images,
            cond: pipeline.encode_prompts(req, guided)?,
            latents: be.scale(&initial, schedule.init_noise_sigma())?,
            rng,
            dims,
        }));
    }
    let mut batch_cond: Option<BatchConditioning<B::Tensor>> = None;
    for (i, &t) in schedule.timesteps().iter().enumerate() {
        let mut left = false;
        for (m, slot) in members.iter_mut().enumerate() {
            if slot.is_some() && cancelled(m) {
                *slot = None;
                left = true;
            }
        }
        let live: Vec<&mut Member<B::Tensor>> = members.iter_mut().flatten().collect();
        if live.is_empty() {
            return Ok(requests.iter().map(|_| None).collect());
        }
        if left || batch_cond.is_none() {
            batch_cond = Some(assemble(be, &live, guided)?);
        }
        let cond = batch_cond.as_ref().expect("assembled above");
        let total: usize = live.iter().map(|m| m.images).sum();
        let latents = be.concat(&live.iter().map(|m| &m.latents).collect::<Vec<_>>(), 0)?;
        let input = if guided {
            be.concat(&[&latents, &latents], 0)?
        } else {
            be.scale(&latents, 1.0)?
        };
        let input = be.scale(&input, schedule.input_scale(i))?;
        let added = cond.text_embeds.as_ref().map(|text_embeds| TextTime {
            text_embeds,
            time_ids: &cond.time_ids,
        });
        let out = pipeline
            .unet()
            .forward(be, &input, t, &cond.context, added.as_ref())?;
        let rule = schedule.step_rule(i);
        let mut offset = 0;
        for member in live {
            let n = member.images;
            let prediction = if guided {
                let uncond = be.narrow(&out, 0, offset, n)?;
                let cond = be.narrow(&out, 0, total + offset, n)?;
                let g = first.guidance_scale;
                be.lincomb(&uncond, 1.0 - g, &cond, g)?
            } else {
                be.narrow(&out, 0, offset, n)?
            };
            offset += n;
            member.latents =
                be.lincomb(&member.latents, rule.sample, &prediction, rule.model_output)?;
            if rule.noise != 0.0 {
                let values = normal(&mut member.rng, &member.dims);
                let noise = be.tensor_from_f32(values, &member.dims, pipeline.dtype())?;
                member.latents = be.lincomb(&member.latents, 1.0, &noise, rule.noise)?;
            }
        }
    }
    decode(pipeline, first, members)
}

/// The conditioning of the live members as one batch: with guidance every member's
/// unconditional rows first, then every member's conditional rows (the order the UNet's
/// input is stacked in).
fn assemble<B: ImageOps>(
    be: &B,
    live: &[&mut Member<B::Tensor>],
    guided: bool,
) -> Result<BatchConditioning<B::Tensor>> {
    let halves: &[usize] = if guided { &[0, 1] } else { &[0] };
    let context = stack(be, live, halves, |c| Some(&c.context))?
        .ok_or_else(|| anyhow::anyhow!("empty batch"))?;
    let text_embeds = stack(be, live, halves, |c| c.text_embeds.as_ref())?;
    let mut time_ids = Vec::new();
    for &half in halves {
        for m in live {
            let width = m.cond.time_ids.len() / (halves.len() * m.images).max(1);
            let rows = half * m.images * width..(half + 1) * m.images * width;
            time_ids.extend_from_slice(m.cond.time_ids.get(rows).unwrap_or(&[]));
        }
    }
    Ok(BatchConditioning {
        context,
        text_embeds,
        time_ids,
    })
}

/// The rows `pick` selects of every member, half by half; `None` if a member has none.
fn stack<B: ImageOps>(
    be: &B,
    live: &[&mut Member<B::Tensor>],
    halves: &[usize],
    pick: impl Fn(&Conditioning<B::Tensor>) -> Option<&B::Tensor>,
) -> Result<Option<B::Tensor>> {
    let mut parts = Vec::new();
    for &half in halves {
        for m in live {
            let Some(t) = pick(&m.cond) else {
                return Ok(None);
            };
            parts.push(be.narrow(t, 0, half * m.images, m.images)?);
        }
    }
    let refs: Vec<&B::Tensor> = parts.iter().collect();
    be.concat(&refs, 0).map(Some)
}

/// Decodes every surviving member's latents in one VAE batch and splits the pixels.
fn decode<B: ImageOps>(
    pipeline: &Pipeline<B>,
    first: &ImageRequest,
    members: Vec<Option<Member<B::Tensor>>>,
) -> Result<Vec<Option<GeneratedImages>>> {
    let be = pipeline.backend();
    let live: Vec<&Member<B::Tensor>> = members.iter().flatten().collect();
    if live.is_empty() {
        return Ok(members.iter().map(|_| None).collect());
    }
    let latents = be.concat(&live.iter().map(|m| &m.latents).collect::<Vec<_>>(), 0)?;
    let pixels = pipeline.decode_to_pixels(&latents)?;
    let per_image = first.width * first.height * 3;
    let mut offset = 0;
    let mut out = Vec::with_capacity(members.len());
    for slot in &members {
        out.push(match slot {
            None => None,
            Some(m) => {
                let size = m.images * per_image;
                let images = GeneratedImages {
                    width: first.width,
                    height: first.height,
                    count: m.images,
                    latents: be.to_host_f32(&m.latents)?,
                    pixels: pixels[offset..offset + size].to_vec(),
                };
                offset += size;
                Some(images)
            }
        });
    }
    Ok(out)
}
