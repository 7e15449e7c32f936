//! A folder of PNG / JPEG images: `ROOT/CLASS/FILE` (ImageFolder layout, labelled by class
//! folder) or `ROOT/FILE` (unlabelled).

use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::DataError;

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Decoded images, in order: class folders sorted by name, files sorted by name within each.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageSet {
    /// One per image: its file, raw values `0..=255` as `[C, H, W]` row-major, and that shape.
    pub items: Vec<(PathBuf, Vec<f32>, [usize; 3])>,
    /// Class folder names (sorted; label = index), empty for a flat folder.
    pub classes: Vec<String>,
    /// One label per image when there are class folders.
    pub labels: Option<Vec<u8>>,
}

/// Reads every image under `root`, as grayscale (`C = 1`) if every image is grayscale, else
/// RGB (`C = 3`; alpha is dropped). Hidden entries (names starting with `.`) are skipped.
///
/// `same_size`: require every image to have the first one's size (when no resize is asked).
/// Errors: [`DataError::Io`] for unreadable folders or files; [`DataError::NotAnImage`] for a
/// file without a PNG / JPEG extension (or a file beside class folders, or a folder inside one);
/// [`DataError::Image`] for an undecodable image; [`DataError::ImageSize`] for the first image
/// whose size differs (with `same_size`); [`DataError::Shape`] for more than 256 classes.
pub(crate) fn read_image_folder(root: &Path, same_size: bool) -> Result<ImageSet, DataError> {
    let (files, classes, labels) = list(root)?;
    let decoded = files.iter().map(|p| decode(p)).collect::<Result<Vec<_>, _>>()?;
    if same_size {
        check_sizes(&files, &decoded)?;
    }
    let gray = decoded.iter().all(|im| !im.color().has_color());
    let items = files.into_iter().zip(&decoded).map(|(p, im)| (p, chw(im, gray))).map(|(p, (v, s))| (p, v, s)).collect();
    Ok(ImageSet { items, classes, labels })
}

type Listing = (Vec<PathBuf>, Vec<String>, Option<Vec<u8>>);

fn list(root: &Path) -> Result<Listing, DataError> {
    let entries = visible_entries(root)?;
    if !entries.iter().any(|p| p.is_dir()) {
        return Ok((image_files(entries)?, Vec::new(), None));
    }
    let n_classes = entries.iter().filter(|p| p.is_dir()).count();
    if n_classes > 256 {
        return Err(DataError::Shape { origin: root.display().to_string(), msg: format!("{n_classes} class folders; at most 256") });
    }
    let (mut files, mut classes, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (label, dir) in entries.into_iter().enumerate() {
        if !dir.is_dir() {
            return Err(DataError::NotAnImage { path: dir, why: "a file beside class folders" });
        }
        let in_class = image_files(visible_entries(&dir)?)?;
        labels.extend(std::iter::repeat_n(label as u8, in_class.len()));
        files.extend(in_class);
        classes.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    Ok((files, classes, Some(labels)))
}

/// The non-hidden entries of `dir`, sorted by name.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let read = std::fs::read_dir(dir).map_err(|e| DataError::io("listing", dir, e))?;
    let mut paths = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| DataError::io("listing", dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn image_files(paths: Vec<PathBuf>) -> Result<Vec<PathBuf>, DataError> {
    for p in &paths {
        let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        if p.is_dir() {
            return Err(DataError::NotAnImage { path: p.clone(), why: "a folder where image files were expected" });
        }
        if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            return Err(DataError::NotAnImage { path: p.clone(), why: "not a .png, .jpg or .jpeg file" });
        }
    }
    Ok(paths)
}

fn decode(path: &Path) -> Result<DynamicImage, DataError> {
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io("reading", path, e))?;
    reader.decode().map_err(|e| DataError::Image { path: path.to_path_buf(), msg: e.to_string() })
}

fn check_sizes(files: &[PathBuf], images: &[DynamicImage]) -> Result<(), DataError> {
    let size = |im: &DynamicImage| [im.height() as usize, im.width() as usize];
    let Some(first) = images.first().map(size) else { return Ok(()) };
    match images.iter().position(|im| size(im) != first) {
        None => Ok(()),
        Some(i) => Err(DataError::ImageSize { path: files[i].clone(), size: size(&images[i]), first: files[0].clone(), first_size: first }),
    }
}

/// Raw values `0..=255` of `im` as `[C, H, W]` with `C = 1` (gray) or `3` (RGB).
fn chw(im: &DynamicImage, gray: bool) -> (Vec<f32>, [usize; 3]) {
    let (h, w) = (im.height() as usize, im.width() as usize);
    if gray {
        return (im.to_luma8().into_raw().into_iter().map(f32::from).collect(), [1, h, w]);
    }
    let hwc = im.to_rgb8().into_raw();
    let values = (0..3).flat_map(|c| hwc.iter().skip(c).step_by(3).map(|&v| f32::from(v))).collect();
    (values, [3, h, w])
}
